-- Runs once, when the Postgres volume is first initialised: the image creates the Airflow
-- database (POSTGRES_DB); MLflow gets its own (both use an alembic_version table).
CREATE DATABASE mlflow;
