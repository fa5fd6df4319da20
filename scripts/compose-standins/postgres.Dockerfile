# Stand-in for postgres:16 where Docker Hub is out of reach: Debian's PostgreSQL (15) behind an entrypoint
# that keeps the official image's contract as docker-compose.yml uses it: POSTGRES_USER, POSTGRES_PASSWORD
# and POSTGRES_DB create the superuser and database on first start; data in /var/lib/postgresql/data;
# password authentication from other containers; pg_isready on the PATH.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15 && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
