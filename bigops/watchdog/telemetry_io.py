"""The watchdog's view of malformed telemetry: the tolerant readers themselves are the run-directory
contract's (``trainer.rundir``: the metrics stream, the heartbeats and the GPU samples); what they dropped
becomes one ``MalformedTelemetry`` finding per source, never a crash."""

from __future__ import annotations

from bigops.watchdog.findings import Finding


def malformed_finding(source: str, bad: list[str]) -> list[Finding]:
    if not bad:
        return []
    counts = {name: bad.count(name) for name in sorted(set(bad))}
    return [Finding("MalformedTelemetry", "warning", f"{source} telemetry: {len(bad)} field(s) of the wrong type "
                    f"ignored ({', '.join(f'{k} x{v}' for k, v in counts.items())})", key=f"MalformedTelemetry:{source}",
                    evidence={"source": source, "fields": counts})]
