//! Case 9, the web UI and HTTP API: fills a metadatabase as case 7 does
//! ([`metadb::create`]), opens an `App` on it, serves the real router
//! ([`sluice::http::serve`], as `sluice serve` does) on a free loopback port
//! and asks it, over HTTP with a keep-alive client, for what the UI asks:
//! one DAG's grid, the first page of the runs list, a deep page of it, and
//! everything the first page load fetches (its HTML, each asset it names and
//! the API calls the DAG list makes), counting the bytes as served.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use sluice::app::{App, AppConfig};

use crate::cases::BenchResult;
use crate::metadb;

/// How long one request may take before the benchmark gives up.
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);

/// The API calls the DAG list (the UI's first page) makes, in order.
const FIRST_PAGE_CALLS: [&str; 2] = ["/api/session", "/api/dags"];

/// Median and 90th percentile of a request's time.
#[derive(Debug, Clone)]
pub struct Timing {
    /// What was asked (method and path).
    pub request: String,
    /// The median.
    pub median: Duration,
    /// The 90th percentile.
    pub p90: Duration,
    /// The response body's size.
    pub bytes: usize,
}

/// One response of the first page load.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// The path fetched.
    pub path: String,
    /// The body's bytes as served (the `content-encoding`, if any, applied).
    pub body: usize,
    /// The status line's and header lines' bytes.
    pub head: usize,
}

/// What case 9 measured.
#[derive(Debug, Clone)]
pub struct Figures {
    /// The metadatabase's shape.
    pub shape: metadb::Shape,
    /// The requests timed.
    pub timings: Vec<Timing>,
    /// The first page load, response by response.
    pub first_load: Vec<Transfer>,
    /// Whether any response of the first load came compressed.
    pub compressed: bool,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        writeln!(
            f,
            "web UI and HTTP API: {} runs x {} task instances over {} DAGs, real server on 127.0.0.1; median and p90 of {}",
            self.shape.runs, self.shape.tasks_per_run, self.shape.dags, self.shape.samples
        )?;
        for t in &self.timings {
            writeln!(
                f,
                "  GET {:<44} median {:>8.3} ms  p90 {:>8.3} ms  {:>7} B",
                t.request,
                ms(t.median),
                ms(t.p90),
                t.bytes
            )?;
        }
        let total: usize = self.first_load.iter().map(|t| t.body + t.head).sum();
        write!(
            f,
            "  first page load: {} B in {} responses ({}):",
            total,
            self.first_load.len(),
            if self.compressed {
                "some compressed"
            } else {
                "uncompressed"
            }
        )?;
        for t in &self.first_load {
            write!(f, " {} {}+{} B;", t.path, t.head, t.body)?;
        }
        Ok(())
    }
}

/// Fills a metadatabase in a new home under `dir` to `shape`, serves it and
/// times the requests (each `shape.samples` times after one warm-up).
pub fn web(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    shape: metadb::Shape,
) -> BenchResult<Figures> {
    let home = dir.join("web-home");
    std::fs::create_dir_all(&home)?;
    let filled = metadb::create(&home.join("sluice.db"), shape)?;
    drop(filled.store);
    let app = App::open(&AppConfig {
        home,
        staging_ttl: Duration::from_secs(24 * 3600),
        allow_unconfined: true,
        workers: None,
        worker: false,
        kubernetes: None,
    })?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (tell, bound) = std::sync::mpsc::channel::<SocketAddr>();
    let server = runtime.spawn(sluice::http::serve(
        app,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        false,
        async move {
            // A dropped sender also stops the server.
            let _ = stopped.await;
        },
        move |addr| {
            // The receiver waits below; if it is gone there is no one to tell.
            let _ = tell.send(addr);
        },
    ));
    let addr = bound
        .recv_timeout(REQUEST_DEADLINE)
        .map_err(|e| format!("the server did not report its address: {e}"))?;
    let base = format!("http://{addr}");
    let measured = runtime.block_on(measure(&base, shape, filled.run_ids.len()));
    // Stop the server whatever the measurement gave, then report the first error.
    let _ = stop.send(());
    let served = runtime.block_on(async { tokio::time::timeout(REQUEST_DEADLINE, server).await });
    let (timings, first_load) = measured?;
    match served {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(format!("the server failed: {e}").into()),
        Ok(Err(e)) => return Err(format!("the server's task failed: {e}").into()),
        Err(_) => return Err("the server did not stop within a minute".into()),
    }
    let compressed = first_load.iter().any(|(_, c)| *c);
    Ok(Figures {
        shape,
        timings,
        first_load: first_load.into_iter().map(|(t, _)| t).collect(),
        compressed,
    })
}

async fn measure(
    base: &str,
    shape: metadb::Shape,
    runs: usize,
) -> BenchResult<(Vec<Timing>, Vec<(Transfer, bool)>)> {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_DEADLINE)
        .build()?;
    let deep = runs.saturating_sub(50);
    let paths = [
        "/api/dags/dag0/grid?limit=25".to_owned(),
        "/api/runs?limit=50".to_owned(),
        format!("/api/runs?limit=50&offset={deep}"),
        "/api/runs?state=success&limit=50".to_owned(),
        "/api/runs?state=failed&limit=50".to_owned(),
        "/api/dags".to_owned(),
    ];
    let mut timings = Vec::with_capacity(paths.len());
    for path in &paths {
        timings.push(time(&client, base, path, shape.samples).await?);
    }
    let (index, html, compressed) = fetch(&client, base, "/").await?;
    let html = String::from_utf8(html).map_err(|e| format!("GET / is not UTF-8: {e}"))?;
    let mut first_load = vec![(index, compressed)];
    let later: Vec<String> = assets(&html)
        .into_iter()
        .chain(FIRST_PAGE_CALLS.map(str::to_owned))
        .collect();
    for path in later {
        let (transfer, _, compressed) = fetch(&client, base, &path).await?;
        first_load.push((transfer, compressed));
    }
    Ok((timings, first_load))
}

/// Times `GET path` `samples` times (after one warm-up), body read included.
async fn time(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    samples: usize,
) -> BenchResult<Timing> {
    let mut bytes = get(client, base, path).await?.len();
    let mut times = Vec::with_capacity(samples.max(1));
    for _ in 0..samples.max(1) {
        let started = Instant::now();
        let body = get(client, base, path).await?;
        times.push(started.elapsed());
        bytes = body.len();
    }
    times.sort();
    // The sample at `tenths` of the way from the fastest to the slowest.
    let at = |tenths: usize| times[(times.len() - 1) * tenths / 10];
    Ok(Timing {
        request: path.to_owned(),
        median: at(5),
        p90: at(9),
        bytes,
    })
}

/// `GET path` as a browser would ask for it (accepting compression); the
/// transfer's sizes, the body, and whether it came compressed.
async fn fetch(
    client: &reqwest::Client,
    base: &str,
    path: &str,
) -> BenchResult<(Transfer, Vec<u8>, bool)> {
    let response = client
        .get(format!("{base}{path}"))
        .header(reqwest::header::ACCEPT_ENCODING, "gzip, deflate, br, zstd")
        .send()
        .await?;
    if !response.status().is_success() {
        return Err(format!("GET {path}: {}", response.status()).into());
    }
    // "HTTP/1.1 200 OK\r\n", each "name: value\r\n", the blank line.
    let head = "HTTP/1.1 200 OK\r\n".len()
        + response
            .headers()
            .iter()
            .map(|(n, v)| n.as_str().len() + 2 + v.as_bytes().len() + 2)
            .sum::<usize>()
        + 2;
    let compressed = response
        .headers()
        .contains_key(reqwest::header::CONTENT_ENCODING);
    // reqwest is built without decompression: these are the bytes as served.
    let body = response.bytes().await?.to_vec();
    let transfer = Transfer {
        path: path.to_owned(),
        body: body.len(),
        head,
    };
    Ok((transfer, body, compressed))
}

/// `GET path`'s body, read whole; an error unless the status is a success.
async fn get(client: &reqwest::Client, base: &str, path: &str) -> BenchResult<Vec<u8>> {
    let response = client.get(format!("{base}{path}")).send().await?;
    let status = response.status();
    let body = response.bytes().await?.to_vec();
    if !status.is_success() {
        return Err(format!("GET {path}: {status}: {}", String::from_utf8_lossy(&body)).into());
    }
    Ok(body)
}

/// The same-origin assets `html` loads (`src="/..."` and `href="/..."`
/// of `script` and `link` elements), in order.
fn assets(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for tag in html
        .split('<')
        .filter(|t| t.starts_with("script") || t.starts_with("link"))
    {
        for attr in ["src=\"", "href=\""] {
            if let Some(rest) = tag.split(attr).nth(1)
                && let Some(url) = rest.split('"').next()
                && url.starts_with('/')
            {
                found.push(url.to_owned());
            }
        }
    }
    found
}
