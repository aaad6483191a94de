# The two commands of the README: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo check test system-packages test-fast test-lowest test-docker test-pods test-ceph test-hosts hosts-need-root bench chart clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,test,check]'
	touch $(STAMP)

# A real distributed job on this machine: 1 chief, 2 workers, 1 parameter server. It starts
# afresh each time (a job that finds checkpoints in its model dir resumes from them instead).
demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/pmlctl submit --name demo --workers 2 --ps 1 --epochs 3 --lr-decay cosine --model-dir runs/demo

# Debian's real fashion_mnist for the tests that stand for the study, and slirp4netns, through which
# a local job's own network namespace reaches storage beyond this machine (deploy/netns.py).
# Installed where this runs as root with apt (CI); elsewhere those tests are skipped, and pytest's
# summary says why.
DEBIAN_PACKAGES := dataset-fashion-mnist slirp4netns
system-packages:
	@if dpkg -s $(DEBIAN_PACKAGES) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES); \
	else echo "note: not root with apt: $(DEBIAN_PACKAGES) is not installed; the tests that need it are skipped"; fi

# The guardrails, before any test: lint, format, types on the contracts, and the import boundaries
# (pyproject.toml says which). `.pre-commit-config.yaml` runs the same.
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: $(STAMP) system-packages
	$(BIN)/python -m pytest -q --durations=20 -m "not docker and not ceph and not hosts"

# Everything but the tests that start TensorFlow processes.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not docker and not ceph and not hosts"

# pmlctl on the lowest versions pyproject.toml allows for its own dependencies (uv's lowest-direct;
# what those pull in is the newest), in a venv of its own without TensorFlow: its --help, and its
# tests that need no TensorFlow. uv reads neither pip's CA (/etc/pip.conf) nor its constraints:
# --system-certs is the system's CA store.
LOWEST := .venv-lowest
# Not test_bad_input.py and test_render_cli.py: they need the extras (the storage and Kubernetes
# clients, kubernetes-validate), and quote the newest click's words.
LOWEST_TESTS := tests/test_cli.py tests/test_spec.py tests/test_help.py tests/test_targets.py \
	tests/test_supervisor_rules.py tests/test_k8s_rules.py
test-lowest:
	rm -rf $(LOWEST)
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/pip install --quiet 'uv>=0.13,<0.14'
	$(LOWEST)/bin/uv pip install --quiet --system-certs --python $(LOWEST)/bin/python --resolution lowest-direct \
		-e . 'pytest>=8,<10' 'pytest-timeout>=2.3,<3'
	$(LOWEST)/bin/pmlctl --help >/dev/null
	$(LOWEST)/bin/python -m pytest -q -p no:cacheprovider -m "not slow and not docker and not ceph and not hosts" \
		$(LOWEST_TESTS)

# Opt-in: installs Docker if absent (root), starts a daemon of its own, builds the trainer image
# (from Debian packages where Docker Hub is unreachable) and runs a ps job as containers.
test-docker: $(STAMP)
	$(BIN)/python -m pytest -q -s -m docker tests/docker

# Opt-in: the chart's native-mode pods (1 chief, 2 workers, 1 ps, 1 evaluator) as containers started
# the way a kubelet would (user, read-only root, no capabilities, emptyDirs, Service names, a Secret),
# with the model on an S3 server; and the image under a CPU limit. test-docker's daemon and image;
# -s shows a line per pod.
test-pods: $(STAMP)
	$(BIN)/python -m pytest -q -s -m docker tests/docker/test_pod_specs.py tests/docker/test_cpu_limit.py

# Opt-in: installs Ceph from Debian if absent (root), starts one monitor and one OSD, and runs the
# storage tests against its RADOS Gateway (a production S3 service) as well.
CEPH_TESTS := tests/test_storage.py tests/test_fencing.py tests/test_two_writers.py tests/test_chaos.py \
	tests/test_remote_jobs.py tests/test_epoch_rows.py tests/test_tfrecord_jobs.py
test-ceph: $(STAMP)
	tests/ceph/run.sh $(BIN)/python -m pytest -q -m ceph $(CEPH_TESTS)

# Opt-in, as root: every task of a job on a test host of its own (a network namespace with an
# address and a name, tests/hosts/), through DNS races, lost links and slow links. -s shows the
# recovery each scenario measured.
test-hosts: hosts-need-root $(STAMP)
	$(BIN)/python -m pytest -q -s -m hosts tests/hosts

hosts-need-root:
	@if [ "$$(id -u)" != 0 ]; then \
		echo "make test-hosts makes network namespaces and needs root: run it as root (sudo make test-hosts)" >&2; \
		exit 1; fi

bench: $(STAMP)
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/cli_startup.py

# values.yaml and values.schema.json of the chart are generated from JobSpec; a test checks them.
chart: $(STAMP)
	$(BIN)/python -m deploy.chart

clean:
	rm -rf $(VENV) $(LOWEST) runs
