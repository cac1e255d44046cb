-- Runs once, on the first start of the pgvector/pgvector container (docker-entrypoint-initdb.d).
-- The same three databases as the local stack; the vector extension in `tandem`.
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
CREATE DATABASE tandem;
\connect tandem
CREATE EXTENSION IF NOT EXISTS vector;
