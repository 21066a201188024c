#!/usr/bin/env python3
"""Run the Airflow pattern as a real Airflow DAG (bench/airflow/s3_multipart_move.py).

  airflow_dag.py setup HOME PG_URL   create a metadata database beside PG_URL's, migrate it, parse the DAG
  airflow_dag.py run HOME SRC_PROFILE SRC_BUCKET SRC_KEY DST_PROFILE DST_BUCKET DST_KEY

`run` starts a scheduler with the LocalExecutor and 16 task slots (the dedicated worker queue),
waits until it is up, then triggers one DAG run and waits for it. It prints the seconds from the
trigger to the run's end on its last line ("moved in S"): a production scheduler is already
running, so its start is not counted. Airflow comes from its own virtualenv (AIRFLOW_PYTHON's
bin directory), installed by bench/run.sh.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DAGS = Path(__file__).resolve().parent / "airflow"
AIRFLOW = str(Path(sys.executable).parent / "airflow")  # this virtualenv's command
SLOTS = 16


def env_for(home, pg_url=None):
    e = dict(os.environ)
    home = Path(home)
    if pg_url is None:
        pg_url = (home / "sql_alchemy_conn").read_text().strip()
    e.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": str(SLOTS),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(SLOTS),
        "AIRFLOW__CORE__MAX_MAP_LENGTH": "100000",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg_url,
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    })
    return e


def airflow(home, *args, pg_url=None):
    subprocess.run([AIRFLOW, *args], env=env_for(home, pg_url), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def setup(home, pg_url):
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    import psycopg2

    conn = psycopg2.connect(pg_url)
    conn.autocommit = True
    with conn.cursor() as c:
        c.execute("SELECT 1 FROM pg_database WHERE datname = 'airflow_bench'")
        if not c.fetchone():
            c.execute("CREATE DATABASE airflow_bench")
    conn.close()
    # SQLAlchemy's URL for psycopg2, naming the new database.
    base = pg_url.split("?")[0].rsplit("/", 1)[0]
    url = base.replace("postgres://", "postgresql+psycopg2://", 1).replace(
        "postgresql://", "postgresql+psycopg2://", 1) + "/airflow_bench"
    (home / "sql_alchemy_conn").write_text(url)
    airflow(home, "db", "migrate", pg_url=url)
    airflow(home, "dags", "reserialize", pg_url=url)


def run(home, sp, sb, sk, dp, db, dk):
    e = env_for(home)
    os.environ.update(e)
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    log = open(Path(home) / "scheduler.log", "w")
    sched = subprocess.Popen([AIRFLOW, "scheduler"], env=e, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        # Up when its job row is heartbeating.
        from airflow.jobs.job import Job

        deadline = time.monotonic() + 120
        while True:
            with create_session() as s:
                if s.query(Job).filter(Job.job_type == "SchedulerJob", Job.state == "running").count():
                    break
            if time.monotonic() > deadline or sched.poll() is not None:
                raise SystemExit("airflow scheduler did not start; see scheduler.log")
            time.sleep(0.5)
        conf = {"files": [{"src_profile": sp, "src_bucket": sb, "src_key": sk,
                           "dst_profile": dp, "dst_bucket": db, "dst_key": dk}]}
        run_id = f"bench_{int(time.time() * 1000)}"
        t0 = time.monotonic()
        trigger_dag("s3_multipart_move", run_id=run_id, conf=conf)
        while True:
            with create_session() as s:
                dr = s.query(DagRun).filter(DagRun.run_id == run_id).one()
                state = str(dr.state)
            if state.endswith("success"):
                break
            if state.endswith("failed"):
                raise SystemExit(f"DAG run {run_id} failed; see {home}/logs")
            time.sleep(0.5)
        print(f"moved in {time.monotonic() - t0:.2f}")
    finally:
        sched.terminate()
        try:
            sched.wait(60)
        except subprocess.TimeoutExpired:
            sched.kill()
            sched.wait()
        try:
            os.killpg(sched.pid, signal.SIGKILL)  # anything it left behind
        except ProcessLookupError:
            pass


def main():
    cmd, *args = sys.argv[1:]
    if cmd == "setup":
        setup(*args)
    elif cmd == "run":
        run(*args)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
