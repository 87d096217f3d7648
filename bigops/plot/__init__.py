"""``bigops plot``: a picture of a run without a Prometheus + Grafana stack — loss, grad norm, learning rate and
tokens/s against the step, incidents and the watchdog's rollbacks, restarts and kills marked, another run or a
TensorBoard log (BLOOM's, by Megatron-DeepSpeed's tag names) overlaid.

``data`` (pure: records and events to figure data), ``sources`` (reading run and TensorBoard directories),
``render`` (matplotlib, Agg, an atomic PNG)."""
