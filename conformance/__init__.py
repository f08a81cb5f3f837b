"""An OCI Distribution conformance suite for any registry URL, written from the spec.

    from conformance import run
    results = run("http://127.0.0.1:5000", "acme/conformance")
    print(results.summary(), results.failed_ids())

or `python -m conformance --registry URL --repo NAMESPACE/REPO`.
"""

from conformance.runner import CheckResult, Results, run

__all__ = ["CheckResult", "Results", "run"]
