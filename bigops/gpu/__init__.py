"""GPU health behind one interface: NVML on a GPU node (``nvml.py``), a scriptable fake in tests (``fake.py``)."""
