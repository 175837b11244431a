-- The warehouse lives beside Airflow's metadata in the same server, in its own database.
create database warehouse owner airflow;
