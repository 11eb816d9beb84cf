//! The benchmark cases of `sluice-bench`: the figures behind "DuckDB's speed plus almost nothing, in a
//! sandbox", each printed next to a baseline measured in the same run.
//!
//! 1. Sandbox tax: the `etl_local` DAG through `sluice run` vs the same three
//!    statements through the `duckdb` crate and through DuckDB's official
//!    build ([`crate::official`]), all as fresh processes, wall and CPU time.
//! 2. Start-up: cold compile, warm deploy, instantiate from a pre-instantiated
//!    component, opening a task's DuckDB session.
//! 3. Host call cost: a context read from the guest vs a local call.
//! 4. Scheduling overhead: chains and fan-outs of no-op tasks.
//! 5. Data out of the sandbox: a query streamed to the guest as Arrow batches
//!    vs read in the host.
//! 6. Postgres load and extract vs `psql \copy` (with `--postgres`).
//! 7. The metadatabase: the reads behind `runs list`, `runs show`, a
//!    scheduler pass and the staging sweep over 100,000 runs ([`metadb`]).
//! 8. Python tasks: compile (first and second Python component of a home),
//!    load from the compile cache, warm instantiation. (Case 1 also runs
//!    `etl_python`, the ETL with its tasks in Python.)
//! 9. The web UI and HTTP API over 100,000 runs: a DAG's grid and the runs
//!    list through a real server, and the bytes of the UI's first load ([`web`]).
//! 10. The Kubernetes executor against the fake API server: API requests and
//!     host-side time per try, over 1,000 no-op tries ([`crate::kube`]).
//!
//! Nothing here asserts on time; `--smoke` runs every case at tiny sizes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use sluice::capabilities::sql::{SqlConfig, SqlSession};
use sluice::capabilities::wasi::sandbox_ctx;
use sluice::capabilities::{Deadline, LogSink, MemoryLimiter, TaskContext, TaskHost};
use sluice::confine::Sandbox;
use sluice::dag::TaskPolicy;
use sluice::events::TaskKey;
use sluice::manifest::Manifest;
use sluice::python_package::{self, PythonPackage};
use sluice::scheduler::{RunOptions, run_dag};
use sluice::{Sluice, capabilities, connections, engine, registry, vault};

use crate::metadb;
use crate::official::Official;
use crate::web;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Tiny sizes, for CI.
    pub smoke: bool,
    /// Row counts of the sandbox-tax case.
    pub etl_rows: Vec<u64>,
    /// The repository (for `examples/` and `plugins/dist`).
    pub repo: PathBuf,
    /// The `sluice` executable to time as a child process.
    pub sluice_exe: PathBuf,
    /// This program, run again in its `baseline` mode for case 1's baseline.
    pub bench_exe: PathBuf,
    /// A Postgres server (Airflow-style URI) for the load/extract case; `psql` must be on PATH.
    pub postgres: Option<String>,
    /// The cases to run (empty: all).
    pub cases: Vec<u8>,
    /// No-op tries through the Kubernetes executor (case 10).
    pub kube_tries: usize,
}

impl BenchOptions {
    fn runs(&self, case: u8) -> bool {
        self.cases.is_empty() || self.cases.contains(&case)
    }
}

/// A bench failure.
pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Wall time, CPU time and peak resident memory of a child process.
#[derive(Debug, Clone, Copy)]
pub struct ChildCost {
    /// Wall clock from spawn to exit.
    pub wall: Duration,
    /// User plus system CPU time of the child (its threads included).
    pub cpu: Duration,
    /// Peak RSS in bytes.
    pub max_rss: u64,
}

/// Runs `command` to its end; fails if it exits non-zero.
pub fn measure_child(command: &mut Command) -> BenchResult<ChildCost> {
    let start = Instant::now();
    let child = command.stdout(std::process::Stdio::null()).spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, not yet waited for (std's Child does not reap on drop);
    // the out-pointers are valid for the call.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    if waited != pid {
        return Err(format!("wait4 failed: {}", std::io::Error::last_os_error()).into());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("{command:?} failed with status {status}").into());
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Ok(ChildCost {
        wall,
        cpu: time(usage.ru_utime) + time(usage.ru_stime),
        max_rss: (usage.ru_maxrss.max(0) as u64) * 1024,
    })
}

/// The seed ETL's three statements, run directly with the `duckdb` crate in
/// `dir`, with the settings the example DAG gives each task.
pub fn baseline_etl(dir: &Path, rows: u64, threads: u32, memory: u64) -> BenchResult<()> {
    let config = duckdb::Config::default()
        .threads(i64::from(threads))?
        .max_memory(&format!("{memory}B"))?;
    let conn = duckdb::Connection::open_in_memory_with_flags(config)?;
    // One statement at a time through a prepared statement, as a task's `execute` does.
    for statement in etl_statements(dir, rows) {
        conn.execute(&statement, [])?;
    }
    Ok(())
}

/// The seed ETL's three statements over `rows` rows, writing in `dir`: what
/// both baselines run.
pub fn etl_statements(dir: &Path, rows: u64) -> [String; 3] {
    let path = |name: &str| format!("'{}'", dir.join(name).display());
    let (raw, agg, csv) = (path("raw.parquet"), path("agg.parquet"), path("output.csv"));
    [
        format!(
            "COPY (SELECT i AS id, 'cat_' || (i % 50) AS category, (random() * 1000)::DECIMAL(10,2) AS amount \
             FROM range({rows}) t(i)) TO {raw} (FORMAT parquet)"
        ),
        format!(
            "COPY (SELECT category, count(*) AS n, sum(amount) AS revenue FROM read_parquet({raw}) \
             GROUP BY category ORDER BY category) TO {agg} (FORMAT parquet)"
        ),
        format!("COPY (SELECT * FROM read_parquet({agg}) ORDER BY category) TO {csv} (HEADER)"),
    ]
}

/// The middle value (of an even count, the mean of the two middle ones).
fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    let n = xs.len();
    match n {
        0 => Duration::ZERO,
        _ if n.is_multiple_of(2) => (xs[n / 2 - 1] + xs[n / 2]) / 2,
        _ => xs[n / 2],
    }
}

pub(crate) fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// Runs every case, printing as it goes.
pub fn run(options: &BenchOptions) -> BenchResult<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "sluice-bench{} — {cores} cores, DuckDB {}",
        if options.smoke { " (smoke)" } else { "" },
        duckdb_version()?
    );
    if options.runs(1) {
        sandbox_tax(options, "etl_local")?;
        if !options.smoke {
            // The Python runtime to compile in a fresh home: case 8 covers
            // Python tasks in smoke mode.
            sandbox_tax(options, "etl_python")?;
        }
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let work = tempfile::tempdir()?;
    let sluice = Sluice::open(&work.path().join("home"))?;
    if options.runs(2) {
        startup(options, &sluice, work.path())?;
    }
    if options.runs(3) {
        runtime.block_on(host_calls(options, &sluice, work.path()))?;
    }
    if options.runs(4) {
        runtime.block_on(scheduling(options, &sluice, work.path()))?;
    }
    if options.runs(5) {
        runtime.block_on(data_out(options, &sluice, work.path()))?;
    }
    if let Some(uri) = options.postgres.as_ref().filter(|_| options.runs(6)) {
        runtime.block_on(postgres_throughput(options, &sluice, work.path(), uri))?;
    }
    if options.runs(7) {
        println!();
        let shape = metadb_shape(options, metadb::Shape::default().samples);
        println!("7. {}", metadb::metadb(work.path(), shape)?);
    }
    if options.runs(8) {
        python_startup(options, work.path())?;
    }
    if options.runs(9) {
        println!();
        let shape = metadb_shape(options, 51);
        println!("9. {}", web::web(&runtime, work.path(), shape)?);
    }
    if options.runs(10) {
        crate::kube::kube(options, work.path())?;
    }
    Ok(())
}

/// The metadatabase of cases 7 and 9: 100,000 runs timed `samples` times,
/// or 1,000 runs timed 3 times in smoke mode.
fn metadb_shape(options: &BenchOptions, samples: usize) -> metadb::Shape {
    if options.smoke {
        metadb::Shape {
            runs: 1_000,
            samples: 3,
            ..metadb::Shape::default()
        }
    } else {
        metadb::Shape {
            samples,
            ..metadb::Shape::default()
        }
    }
}

fn psql(uri: &str, command: &str) -> BenchResult<Duration> {
    let clock = Instant::now();
    let out = Command::new("psql")
        .args([uri, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", command])
        .output()?;
    if !out.status.success() {
        return Err(format!("psql failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(clock.elapsed())
}

async fn postgres_throughput(
    options: &BenchOptions,
    sluice: &Sluice,
    work: &Path,
    uri: &str,
) -> BenchResult<()> {
    println!();
    let rows: u64 = if options.smoke { 10_000 } else { 10_000_000 };
    let select = format!(
        "SELECT i AS id, 'cat_' || (i % 50) AS category, ((i % 100000) / 100.0)::DECIMAL(10,2) AS amount FROM range({rows}) t(i)"
    );
    let vault = vault::Vault::open(&sluice.store, sluice.home.root())?;
    let connection =
        sluice::capabilities::connections::CONNECTION_TYPES.parse_uri("bench_pg", uri)?;
    connections::add(&sluice.store, &vault, &connection, true)?;
    psql(
        uri,
        "DROP TABLE IF EXISTS sluice_bench; CREATE TABLE sluice_bench (id bigint, category text, amount numeric(10,2))",
    )?;
    // The same rows as CSV for psql (made by DuckDB, not timed).
    let csv = work.join("bench_rows.csv");
    duckdb::Connection::open_in_memory()?.execute_batch(&format!(
        "COPY ({select}) TO '{}' (HEADER false)",
        csv.display()
    ))?;

    let psql_in = psql(
        uri,
        &format!("\\copy sluice_bench FROM '{}' CSV", csv.display()),
    )?;
    psql(uri, "TRUNCATE sluice_bench")?;
    let task = |steps: &str| {
        format!(
            "[tasks.t]\nplugin = \"testkit\"\nconnections = [\"bench_pg\"]\nparams = {{ mode = \"steps\", conn = \"bench_pg\", steps = {steps} }}\n"
        )
    };
    let dist = options.repo.join("plugins/dist");
    let load = write_dag(
        work,
        "pgload",
        &task(&format!(
            "[{{ pg = \"copy_in\", table = \"sluice_bench\", query = \"{select}\" }}]"
        )),
        &dist,
    )?;
    let (sluice_in, _) = run_once(sluice, &load, Map::new()).await?;

    let out_csv = work.join("bench_out.csv");
    let psql_out = psql(
        uri,
        &format!(
            "\\copy (SELECT * FROM sluice_bench) TO '{}' CSV",
            out_csv.display()
        ),
    )?;
    let extract = write_dag(
        work,
        "pgextract",
        &task("[{ pg = \"extract\", query = \"SELECT * FROM sluice_bench\", table = \"back\" }]"),
        &dist,
    )?;
    let (sluice_out, _) = run_once(sluice, &extract, Map::new()).await?;
    psql(uri, "DROP TABLE sluice_bench")?;

    let rate = |d: Duration| rows as f64 / d.as_secs_f64() / 1e6;
    println!("6. Postgres: {rows} rows (bigint, text, numeric(10,2)), same server");
    println!(
        "   load:    copy-in {} = {:.2} M rows/s; psql \\copy from CSV {} = {:.2} M rows/s; ratio {:.2}x",
        secs(sluice_in),
        rate(sluice_in),
        secs(psql_in),
        rate(psql_in),
        sluice_in.as_secs_f64() / psql_in.as_secs_f64()
    );
    println!(
        "   extract: extract {} = {:.2} M rows/s; psql \\copy to CSV {} = {:.2} M rows/s; ratio {:.2}x",
        secs(sluice_out),
        rate(sluice_out),
        secs(psql_out),
        rate(psql_out),
        sluice_out.as_secs_f64() / psql_out.as_secs_f64()
    );
    Ok(())
}

fn duckdb_version() -> BenchResult<String> {
    Ok(duckdb::Connection::open_in_memory()?.version()?)
}

fn sandbox_tax(options: &BenchOptions, example_id: &str) -> BenchResult<()> {
    let policy = TaskPolicy::default();
    let manifest = Manifest::load(&options.repo.join("examples").join(example_id))?;
    let example = manifest
        .spec
        .tasks
        .first()
        .map(|t| t.policy)
        .unwrap_or(policy);
    println!();
    println!(
        "1. sandbox tax: {example_id} via `sluice run --keep-staging` vs the same SQL via the duckdb crate and via \
         DuckDB's official build (all fresh processes that leave their files, deleted untimed after each; \
         threads {}, memory_limit {}; median of 6, one in each order; `delete`: deleting sluice's staging, which a run \
         without --keep-staging does before it returns)",
        example.threads,
        mib(example.duckdb_memory)
    );
    let official = Official::locate(&duckdb_version()?, options.smoke)?;
    match &official {
        Some(official) => println!(
            "   official build: the duckdb {} wheel from PyPI",
            official.version
        ),
        None => println!("   official build: not installed (a full run installs it), skipped"),
    }
    println!(
        "   {:>10}  {:>14}  {:>14}  {:>14}  {:>7}  {:>9}  {:>9}  {:>9}  {:>9}  {:>10}  {:>10}",
        "rows",
        "crate wall/cpu",
        "official",
        "sluice",
        "delete",
        "×crate",
        "×official",
        "cpu×crate",
        "cpu×offic",
        "crate RSS",
        "sluice RSS"
    );
    let home = tempfile::tempdir()?;
    let exe = &options.sluice_exe;
    let example_dir = options.repo.join("examples").join(example_id);
    let clock = Instant::now();
    measure_child(
        Command::new(exe)
            .arg("--home")
            .arg(home.path())
            .arg("deploy")
            .arg(&example_dir),
    )?;
    println!(
        "   deploy (compiles its components in a fresh home): {}",
        secs(clock.elapsed())
    );
    for &rows in &options.etl_rows {
        let (mut base, mut official_costs, mut sandboxed) = (Vec::new(), Vec::new(), Vec::new());
        let mut deletes = Vec::new();
        // Alternated, so that a noisy neighbour hurts all three alike, and in
        // every order: a process runs slower after some others than after
        // itself (see `ORDERS`).
        for order in ORDERS {
            for contender in order {
                match contender {
                    Contender::Crate => {
                        let dir = tempfile::tempdir()?;
                        base.push(measure_child(
                            Command::new(&options.bench_exe)
                                .args([
                                    "baseline",
                                    "--rows",
                                    &rows.to_string(),
                                    "--threads",
                                    &example.threads.to_string(),
                                ])
                                .args(["--memory", &example.duckdb_memory.to_string(), "--dir"])
                                .arg(dir.path()),
                        )?);
                    }
                    Contender::Official => {
                        if let Some(official) = &official {
                            let dir = tempfile::tempdir()?;
                            official_costs.push(measure_child(&mut official.command(
                                &etl_statements(dir.path(), rows),
                                example.threads,
                                example.duckdb_memory,
                            ))?);
                        }
                    }
                    Contender::Sluice => {
                        sandboxed.push(measure_child(
                            Command::new(exe)
                                .arg("--home")
                                .arg(home.path())
                                .args([
                                    "run",
                                    example_id,
                                    "--no-progress",
                                    "--keep-staging",
                                    "--param",
                                    &format!("rows={rows}"),
                                ])
                                .stderr(std::process::Stdio::null()),
                        )?);
                        let staging = home.path().join("staging");
                        let clock = Instant::now();
                        std::fs::remove_dir_all(&staging)?;
                        deletes.push(clock.elapsed());
                        std::fs::create_dir_all(&staging)?;
                    }
                }
            }
        }
        let (b, s) = (Median::of(&base), Median::of(&sandboxed));
        let o = (!official_costs.is_empty()).then(|| Median::of(&official_costs));
        let ratio = |x: Duration, y: Duration| format!("{:.3}x", x.as_secs_f64() / y.as_secs_f64());
        let or_dash = |f: &dyn Fn(&Median) -> String| o.as_ref().map_or_else(|| "-".to_owned(), f);
        println!(
            "   {rows:>10}  {:>14}  {:>14}  {:>14}  {:>7}  {:>9}  {:>9}  {:>9}  {:>9}  {:>10}  {:>10}",
            b.shown(),
            or_dash(&Median::shown),
            s.shown(),
            secs(median(deletes)),
            ratio(s.wall, b.wall),
            or_dash(&|o| ratio(s.wall, o.wall)),
            ratio(s.cpu, b.cpu),
            or_dash(&|o| ratio(s.cpu, o.cpu)),
            mib(b.max_rss),
            mib(s.max_rss)
        );
    }
    Ok(())
}

/// A process measured by case 1.
#[derive(Clone, Copy)]
enum Contender {
    Crate,
    Official,
    Sluice,
}

/// Case 1's repetitions: every order of its three processes, so that each
/// follows each other as often. On this 2-core VM a process ran 5-8% slower,
/// with more system time, right after a run of the official build than right
/// after the crate baseline or `sluice` (BENCHMARKS.md, issue 12, sixth pass),
/// and case 1 once always ran `sluice` right after it.
const ORDERS: [[Contender; 3]; 6] = {
    use Contender::{Crate as C, Official as O, Sluice as S};
    [
        [C, O, S],
        [C, S, O],
        [O, C, S],
        [O, S, C],
        [S, C, O],
        [S, O, C],
    ]
};

/// The medians of a child's repeated costs (each figure on its own), and the
/// largest RSS.
struct Median {
    wall: Duration,
    cpu: Duration,
    max_rss: u64,
}

impl Median {
    fn of(costs: &[ChildCost]) -> Self {
        Self {
            wall: median(costs.iter().map(|c| c.wall).collect()),
            cpu: median(costs.iter().map(|c| c.cpu).collect()),
            max_rss: costs.iter().map(|c| c.max_rss).max().unwrap_or(0),
        }
    }

    /// `wall/cpu` in seconds.
    fn shown(&self) -> String {
        format!("{}/{}", secs(self.wall), secs(self.cpu))
    }
}

fn startup(options: &BenchOptions, sluice: &Sluice, work: &Path) -> BenchResult<()> {
    println!();
    println!("2. start-up");
    let dir = work.join("startup");
    std::fs::create_dir_all(&dir)?;
    let manifest_path = dir.join("dag.toml");
    let dist = options.repo.join("plugins/dist");
    std::fs::write(
        &manifest_path,
        format!(
            "[dag]\nid = \"startup\"\nplugin_dir = \"{}\"\n[tasks.t]\nplugin = \"testkit\"\n",
            dist.display()
        ),
    )?;
    let manifest = Manifest::load(&manifest_path)?;
    let clock = Instant::now();
    let first = registry::deploy(&sluice.home, &sluice.store, &sluice.engine, &manifest)?;
    let cold = clock.elapsed();
    let clock = Instant::now();
    let again = registry::deploy(&sluice.home, &sluice.store, &sluice.engine, &manifest)?;
    let warm = clock.elapsed();
    let fresh_engine = engine::Engine::new(&sluice.home)?;
    let digest = sluice.store.version("startup", &first.version)?.spec.tasks[0]
        .component
        .clone();
    let blob = sluice.home.blob(&digest);
    let clock = Instant::now();
    let loaded = fresh_engine.prepare(&digest, &blob)?;
    let from_disk = clock.elapsed();
    println!(
        "   cold deploy of testkit (sha256 + compile + cache write): {}",
        secs(cold)
    );
    println!(
        "   re-deploy of unchanged code: {} (components compiled: {}, new version: {})",
        secs(warm),
        again.compiled.len(),
        again.new_version
    );
    println!(
        "   load from the compile cache in a new engine: {} (compiled: {})",
        secs(from_disk),
        loaded.compiled
    );

    let iterations = if options.smoke { 5 } else { 200 };
    let (mut instantiate, mut sql_pooled, mut sql_on_demand, mut sql_unconfined) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let on_demand = std::sync::Arc::new(capabilities::SqlPool::on_demand());
    let staging = work.join("startup-staging");
    std::fs::create_dir_all(&staging)?;
    let staging = staging.canonicalize()?;
    let config = SqlConfig {
        staging_dir: staging.clone(),
        memory_limit: 1 << 30,
        threads: 1,
        spill_limit: 1 << 30,
        sandbox: sluice.sandbox().clone(),
    };
    // The same session without the kernel layer, to show what it costs.
    let unconfined = SqlConfig {
        sandbox: Sandbox::Unconfined {
            reason: "benchmark baseline".into(),
        },
        ..config.clone()
    };
    let (events, _rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..iterations {
        // Let the pool refill, as it does between tasks of a real pipeline (not timed).
        std::thread::sleep(Duration::from_millis(20));
        for (pool, config, samples) in [
            (&sluice.sql_pool, &config, &mut sql_pooled),
            (&on_demand, &config, &mut sql_on_demand),
            (&sluice.sql_pool, &unconfined, &mut sql_unconfined),
        ] {
            let clock = Instant::now();
            let mut session = SqlSession::new(pool.clone(), config.clone());
            session.execute("SELECT 1")?;
            samples.push(clock.elapsed());
        }
        let host = bench_host(sluice, &staging, &config, &events)?;
        let clock = Instant::now();
        let (mut store, _ticking) = fresh_engine.store(host);
        loaded.pre.instantiate(&mut store)?;
        instantiate.push(clock.elapsed());
    }
    println!(
        "   warm instantiate (store + instance from the pre-instantiated component), median of {iterations}: {:.1} µs",
        median(instantiate).as_secs_f64() * 1e6
    );
    println!(
        "   first SQL call of a task (fresh database from the pool, {}, lock down, SELECT 1), median: {:.1} µs",
        sluice.sandbox().label(),
        median(sql_pooled).as_secs_f64() * 1e6
    );
    println!(
        "   the same with the database opened on demand instead, median: {:.1} µs",
        median(sql_on_demand).as_secs_f64() * 1e6
    );
    println!(
        "   the same from the pool without kernel confinement, median: {:.1} µs",
        median(sql_unconfined).as_secs_f64() * 1e6
    );
    Ok(())
}

/// The host state of one try of DAG `startup`'s task `t`, in `staging`.
fn bench_host(
    sluice: &Sluice,
    staging: &Path,
    config: &SqlConfig,
    events: &tokio::sync::mpsc::UnboundedSender<sluice::events::RunEvent>,
) -> BenchResult<TaskHost> {
    let (wasi, _captured) = sandbox_ctx(staging)?;
    let key = TaskKey {
        run_id: "bench".into(),
        task_id: "t".into(),
        try_number: 1,
    };
    Ok(TaskHost::new(
        TaskContext {
            dag_id: "startup".into(),
            run_id: "bench".into(),
            task_id: "t".into(),
            try_number: 1,
            logical_date: chrono::Utc::now(),
            data_interval_start: String::new(),
            data_interval_end: String::new(),
            params: "{}".into(),
            staging_dir: staging.display().to_string(),
        },
        SqlSession::new(sluice.sql_pool.clone(), config.clone()),
        LogSink::new(key, events.clone()),
        std::sync::Arc::new(Deadline::after(Duration::from_secs(60))),
        MemoryLimiter::new(64 << 20),
        capabilities::Grants::none(config.sandbox.clone()),
        wasi,
    ))
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Case 8: what a Python task costs to deploy, load and instantiate. Every
/// Python task runs on one runtime component (the interpreter and the SDK)
/// and is itself a package of sources, so the first Python task of a fresh
/// home compiles the runtime and the next ones (different code, the same
/// componentize-py) compile nothing.
fn python_startup(options: &BenchOptions, work: &Path) -> BenchResult<()> {
    println!();
    println!(
        "8. Python tasks (a shared runtime component + a package of sources each, a fresh home)"
    );
    let sluice = Sluice::open(&work.join("python-home"))?;
    let dist = options.repo.join("plugins/dist");
    let mut digests = Vec::new();
    for (n, plugin) in ["py-testkit", "etl-extract-py", "etl-transform-py"]
        .iter()
        .enumerate()
    {
        let package = std::fs::read(dist.join(format!("{plugin}.{}", python_package::EXTENSION)))?;
        let runtime_key = PythonPackage::parse(&package)?.runtime_key;
        let runtime_size = std::fs::metadata(
            dist.join(python_package::RUNTIME_DIR)
                .join(format!("{runtime_key}.wasm")),
        )?
        .len();
        let manifest = write_dag(
            work,
            &format!("python{n}"),
            &format!("[tasks.t]\nplugin = \"{plugin}\"\n"),
            &dist,
        )?;
        let (cpu, clock) = (cpu_time(), Instant::now());
        let deployed = registry::deploy(&sluice.home, &sluice.store, &sluice.engine, &manifest)?;
        let (wall, cpu) = (clock.elapsed(), cpu_time() - cpu);
        println!(
            "   deploy #{} ({plugin}: {:.1} KiB package, runtime key {} {}): {} wall, {} CPU (compiled: {})",
            n + 1,
            package.len() as f64 / 1024.0,
            &runtime_key[..12],
            mib(runtime_size),
            secs(wall),
            secs(cpu),
            deployed.compiled.len()
        );
        let version = sluice.store.version(&deployed.dag_id, &deployed.version)?;
        digests.push((plugin, version.spec.tasks[0].component.clone()));
    }
    let entries: Vec<u64> = std::fs::read_dir(sluice.home.root().join("cache/compiled"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .collect();
    println!(
        "   compile cache: {} in {} entries for the three",
        mib(entries.iter().sum()),
        entries.len()
    );

    let fresh_engine = engine::Engine::new(&sluice.home)?;
    let mut loaded = Vec::new();
    for (plugin, digest) in &digests {
        let clock = Instant::now();
        let prepared = fresh_engine.prepare(digest, &sluice.home.blob(digest))?;
        println!(
            "   load {plugin} in a new engine (the runtime from the compile cache, then from memory): {} (compiled: {})",
            secs(clock.elapsed()),
            prepared.compiled
        );
        loaded.push(prepared);
    }
    // What a `sluice worker` does with the runtime code its host verified and
    // handed over as a sealed memfd: map it, then read the task's package.
    for (plugin, digest) in &digests {
        let (runtime, code) = fresh_engine
            .sealed_code(digest)
            .ok_or_else(|| format!("no sealed code for {plugin} after loading it"))?;
        let code = code.try_clone()?;
        let worker_engine = engine::Engine::new(&sluice.home)?;
        let clock = Instant::now();
        worker_engine.adopt(&runtime, code, &sluice.home.blob(&runtime))?;
        let prepared = worker_engine.prepare(digest, &sluice.home.blob(digest))?;
        println!(
            "   load {plugin} in a worker from the host's sealed runtime code: {} (compiled: {})",
            secs(clock.elapsed()),
            prepared.compiled
        );
    }

    let staging = work.join("python-staging");
    std::fs::create_dir_all(&staging)?;
    let staging = staging.canonicalize()?;
    let config = SqlConfig {
        staging_dir: staging.clone(),
        memory_limit: 1 << 30,
        threads: 1,
        spill_limit: 1 << 30,
        sandbox: sluice.sandbox().clone(),
    };
    let (events, _rx) = tokio::sync::mpsc::unbounded_channel();
    let iterations = if options.smoke { 5 } else { 100 };
    let (mut instantiate, mut imported, mut smallest) = (Vec::new(), Vec::new(), Vec::new());
    let noop = r#"{"params":{"mode":"noop"},"upstream":{}}"#;
    // The smallest task there is: what a run costs besides the task's own import.
    let runtime_key = loaded[0]
        .python
        .as_ref()
        .ok_or("py-testkit is not a Python package")?
        .runtime_key
        .clone();
    let tiny = std::sync::Arc::new(PythonPackage::new(
        &runtime_key,
        "tiny",
        vec![python_package::SourceFile::new(
            "tiny.py",
            "from sluice import task\n\n@task\ndef run(ctx, input):\n    return {}\n",
        )],
    ));
    for _ in 0..iterations {
        let mut host = bench_host(&sluice, &staging, &config, &events)?;
        host.python_code = capabilities::PythonCode(loaded[1].python.clone());
        let clock = Instant::now();
        let (mut store, _ticking) = fresh_engine.store(host);
        loaded[1].pre.instantiate(&mut store)?;
        instantiate.push(clock.elapsed());

        // The runtime given `code` as its task's sources (imported as every
        // try does), the function called, `{}` returned: the time it took.
        let run_noop = |code, what: &str| -> BenchResult<Duration> {
            let mut host = bench_host(&sluice, &staging, &config, &events)?;
            host.python_code = capabilities::PythonCode(code);
            let clock = Instant::now();
            let (mut store, _ticking) = fresh_engine.store(host);
            let task = loaded[0].pre.instantiate(&mut store)?;
            let output = task.call_run(&mut store, noop)?;
            let took = clock.elapsed();
            match output {
                Ok(text) if text == "{}" => Ok(took),
                other => Err(format!("{what} returned {other:?}").into()),
            }
        };
        imported.push(run_noop(
            loaded[0].python.clone(),
            "py-testkit's noop mode",
        )?);
        smallest.push(run_noop(Some(tiny.clone()), "the smallest task")?);
    }
    println!(
        "   warm instantiate of {} (store + instance), median of {iterations}: {:.1} µs",
        digests[1].0,
        median(instantiate).as_secs_f64() * 1e6
    );
    println!(
        "   warm instantiate + import of a one-function module + its run, median of {iterations}: {:.1} µs",
        median(smallest).as_secs_f64() * 1e6
    );
    println!(
        "   warm instantiate + import of {}'s module + a no-op run, median of {iterations}: {:.1} µs",
        digests[0].0,
        median(imported).as_secs_f64() * 1e6
    );
    Ok(())
}

fn write_dag(work: &Path, id: &str, body: &str, dist: &Path) -> BenchResult<Manifest> {
    let dir = work.join(id);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("dag.toml");
    std::fs::write(
        &path,
        format!(
            "[dag]\nid = \"{id}\"\nplugin_dir = \"{}\"\n{body}",
            dist.display()
        ),
    )?;
    Ok(Manifest::load(&path)?)
}

async fn run_once(
    sluice: &Sluice,
    manifest: &Manifest,
    params: Map<String, Value>,
) -> BenchResult<(Duration, String)> {
    let deployment = registry::deploy(&sluice.home, &sluice.store, &sluice.engine, manifest)?;
    let version = sluice
        .store
        .version(&deployment.dag_id, &deployment.version)?;
    let clock = Instant::now();
    let summary = run_dag(
        sluice,
        &version,
        RunOptions {
            params,
            ..RunOptions::default()
        },
        None,
    )
    .await?;
    let elapsed = clock.elapsed();
    if summary.error.is_some() {
        return Err(format!("bench DAG {} failed: {:?}", manifest.spec.id, summary.error).into());
    }
    let _ = std::fs::remove_dir_all(&summary.staging_dir);
    Ok((elapsed, summary.run_id))
}

async fn host_calls(options: &BenchOptions, sluice: &Sluice, work: &Path) -> BenchResult<()> {
    println!();
    let n = if options.smoke { 1_000 } else { 100_000 };
    let dist = options.repo.join("plugins/dist");
    let manifest = write_dag(
        work,
        "hostcalls",
        &format!("[tasks.t]\nplugin = \"testkit\"\nparams = {{ mode = \"hostcalls\", n = {n} }}\n"),
        &dist,
    )?;
    let (_, run_id) = run_once(sluice, &manifest, Map::new()).await?;
    let output = sluice
        .store
        .tasks(&run_id)?
        .into_iter()
        .find_map(|t| t.output)
        .ok_or("hostcalls produced no output")?;
    let output: Value = serde_json::from_str(&output)?;
    let host = output["host_ns_per_call"].as_f64().unwrap_or(f64::NAN);
    let local = output["local_ns_per_call"].as_f64().unwrap_or(f64::NAN);
    println!("3. host call cost ({n} calls, timed in the guest)");
    println!(
        "   context read (host call): {host:.1} ns/call; local function: {local:.2} ns/call; ratio {:.0}x",
        host / local
    );
    Ok(())
}

async fn scheduling(options: &BenchOptions, sluice: &Sluice, work: &Path) -> BenchResult<()> {
    println!();
    println!("4. scheduling overhead: no-op tasks (testkit echo), metadatabase writes included");
    println!(
        "   {:>6}  {:<8}  {:>9}  {:>12}",
        "tasks", "shape", "total", "per task"
    );
    let dist = options.repo.join("plugins/dist");
    let sizes: &[usize] = if options.smoke { &[10] } else { &[100, 1000] };
    for &n in sizes {
        for shape in ["chain", "fan-out"] {
            let mut body = String::new();
            for i in 0..n {
                let after = if shape == "chain" && i > 0 {
                    format!("after = [\"t{}\"]\n", i - 1)
                } else {
                    String::new()
                };
                body.push_str(&format!(
                    "[tasks.t{i}]\nplugin = \"testkit\"\nparams = {{ mode = \"echo\" }}\n{after}"
                ));
            }
            let id = format!("sched_{}_{n}", shape.replace('-', "_"));
            let manifest = write_dag(work, &id, &body, &dist)?;
            let (elapsed, _) = run_once(sluice, &manifest, Map::new()).await?;
            println!(
                "   {n:>6}  {shape:<8}  {:>9}  {:>9.2} ms",
                secs(elapsed),
                elapsed.as_secs_f64() * 1e3 / n as f64
            );
        }
    }
    Ok(())
}

async fn data_out(options: &BenchOptions, sluice: &Sluice, work: &Path) -> BenchResult<()> {
    println!();
    let rows: u64 = if options.smoke { 10_000 } else { 10_000_000 };
    let sql = format!("SELECT range AS id, range * 2 AS v, range % 1000 AS k FROM range({rows})");
    let dist = options.repo.join("plugins/dist");
    let manifest = write_dag(
        work,
        "dataout",
        &format!(
            "[tasks.t]\nplugin = \"testkit\"\nparams = {{ mode = \"cursor\", sql = \"{sql}\" }}\n"
        ),
        &dist,
    )?;
    let (guest, _) = run_once(sluice, &manifest, Map::new()).await?;
    let conn = duckdb::Connection::open_in_memory()?;
    let clock = Instant::now();
    let mut stmt = conn.prepare(&sql)?;
    let mut counted = 0usize;
    for batch in stmt.stream_arrow([])? {
        counted += batch?.num_rows();
    }
    let host = clock.elapsed();
    println!("5. data out of the sandbox: {rows} rows × 3 BIGINT columns");
    println!(
        "   to the guest as Arrow IPC batches (whole task run): {} = {:.1} M rows/s; read in the host: {} = {:.1} M rows/s ({counted} rows); ratio {:.2}x",
        secs(guest),
        rows as f64 / guest.as_secs_f64() / 1e6,
        secs(host),
        rows as f64 / host.as_secs_f64() / 1e6,
        guest.as_secs_f64() / host.as_secs_f64()
    );
    Ok(())
}
