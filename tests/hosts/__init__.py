"""The hosts tier (`make test-hosts`, as root): every task of a job on a test host of its own, a
network namespace with an address and a name, so that jobs meet name resolution, lost links and
slow links as pods do. A package, so that its modules import as `hosts.*` beside tests/conftest.py."""
