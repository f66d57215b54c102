//! tokio-postgres driver program (Debian's packaged crates, built offline): the canonical scenarios
//! with its per-query named prepared statements, explicit Statement reuse, Transaction, copy_in /
//! copy_out, CancelToken, notifications from Connection::poll_message and automatic pipelining of
//! concurrent futures. One JSON line per scenario.

use bytes::Bytes;
use futures_util::{future, pin_mut, stream, SinkExt, StreamExt};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification, SimpleQueryMessage};

const NAME: &str = "tokio-postgres";
const ROWS_LARGE: i32 = 100_000;
const ROWS_COPY: i32 = 10_000;
const BYTEA_SIZE: usize = 10 * 1024 * 1024;
const BATCH_SIZE: i32 = 500;
const TXNS_PER_CLIENT: i32 = 10;
const PREPARED_REUSES: i32 = 20;
const LISTEN_TXN_NA: &str = "impossible by design in transaction mode; the pooler refused LISTEN: ";
const LISTEN_TXN_SILENT: &str = "LISTEN was accepted silently in transaction mode and the notification was lost; the pooler must refuse LISTEN with a clear error";

#[derive(Clone)]
struct Params {
    host: String,
    port: u16,
    db: String,
    user: String,
    password: String,
    md5_user: String,
    md5_password: String,
    mode: String,
    clients: i32,
    churn: i32,
    timeout: f64,
    only: Vec<String>,
    ssl: bool,
}

fn env(key: &str, def: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| def.to_string())
}

impl Params {
    fn from_env() -> Params {
        Params {
            host: env("DRV_HOST", "127.0.0.1"),
            port: env("DRV_PORT", "5432").parse().unwrap(),
            db: env("DRV_DB", "app"),
            user: env("DRV_USER", "app_scram"),
            password: env("DRV_PASSWORD", ""),
            md5_user: env("DRV_MD5_USER", "app_md5"),
            md5_password: env("DRV_MD5_PASSWORD", ""),
            mode: env("DRV_MODE", "direct"),
            clients: env("DRV_CLIENTS", "30").parse().unwrap(),
            churn: env("DRV_CHURN", "1000").parse().unwrap(),
            timeout: env("DRV_TIMEOUT", "60").parse().unwrap(),
            only: env("DRV_ONLY", "").split(',').filter(|s| !s.is_empty()).map(String::from).collect(),
            ssl: env("DRV_SSL", "") == "require",
        }
    }
}

/// Outcome of a scenario that did not pass.
enum Failure {
    Na(String),
    Fail(String),
}

type R<T> = Result<T, Failure>;

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("[{}] {}: {}", db.code().code(), db.severity(), db.message()),
        None => e.to_string(),
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Failure {
        Failure::Fail(describe(&e))
    }
}

fn check(cond: bool, what: impl Into<String>) -> R<()> {
    if cond {
        Ok(())
    } else {
        Err(Failure::Fail(what.into()))
    }
}

fn state_of(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

fn expect_state<T>(res: Result<T, tokio_postgres::Error>, state: &str) -> R<()> {
    match res {
        Ok(_) => Err(Failure::Fail(format!("expected SQLSTATE {state}, but the statement succeeded"))),
        Err(e) if state_of(&e) == Some(state) => Ok(()),
        Err(e) => Err(Failure::Fail(format!("expected SQLSTATE {state}, got {}", describe(&e)))),
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("drv_{prefix}_{}_{}", std::process::id(), nanos % (1 << 30))
}

fn payload() -> Vec<u8> {
    // Deterministic pseudo-random bytes (xorshift): every byte value occurs.
    let mut x: u32 = 2463534242;
    (0..BYTEA_SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x & 0xff) as u8
        })
        .collect()
}

fn md5hex(data: &[u8]) -> String {
    format!("{:x}", md5::compute(data))
}

struct Conn {
    client: Client,
    notes: mpsc::UnboundedReceiver<Notification>,
}

// TLS for DRV_SSL=require (the matrix's -tls modes): native-tls without certificate checks, and the
// tls-server-end-point channel binding data of the server's certificate, so that tokio-postgres's SCRAM
// binds (SCRAM-SHA-256-PLUS) as it would with the postgres-native-tls crate, which Debian does not package.
#[derive(Clone)]
struct Tls(tokio_native_tls::TlsConnector);

impl Tls {
    fn new() -> Tls {
        let c = native_tls::TlsConnector::builder().danger_accept_invalid_certs(true).build().unwrap();
        Tls(tokio_native_tls::TlsConnector::from(c))
    }
}

struct TlsTo(tokio_native_tls::TlsConnector, String);

struct TlsConn<S>(tokio_native_tls::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> MakeTlsConnect<S> for Tls {
    type Stream = TlsConn<S>;
    type TlsConnect = TlsTo;
    type Error = native_tls::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<TlsTo, native_tls::Error> {
        Ok(TlsTo(self.0.clone(), domain.to_string()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> TlsConnect<S> for TlsTo {
    type Stream = TlsConn<S>;
    type Error = native_tls::Error;
    type Future = Pin<Box<dyn Future<Output = Result<TlsConn<S>, native_tls::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move { Ok(TlsConn(self.0.connect(&self.1, stream).await?)) })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConn<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConn<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for TlsConn<S> {
    fn channel_binding(&self) -> ChannelBinding {
        match self.0.get_ref().tls_server_end_point() {
            Ok(Some(data)) => ChannelBinding::tls_server_end_point(data),
            _ => ChannelBinding::none(),
        }
    }
}

// Drives a Connection; its asynchronous NotificationResponse messages (LISTEN) go to the returned channel.
fn pump<S, T>(mut connection: tokio_postgres::Connection<S, T>) -> mpsc::UnboundedReceiver<Notification>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    // The Connection future must be polled for anything to happen; poll_message also yields
    // the asynchronous NotificationResponse messages that LISTEN needs.
    let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    rx
}

async fn connect_as(p: &Params, user: &str, password: &str) -> Result<Conn, tokio_postgres::Error> {
    let conninfo = format!(
        "host={} port={} dbname={} user={} password={} connect_timeout=10 sslmode={} channel_binding={}",
        p.host,
        p.port,
        p.db,
        user,
        password,
        if p.ssl { "require" } else { "disable" },
        // Over TLS the SCRAM role's logins must bind to the channel (SCRAM-SHA-256-PLUS); the md5 role cannot.
        if p.ssl && user == p.user { "require" } else { "prefer" }
    );
    let (client, notes) = if p.ssl {
        let (client, connection) = tokio_postgres::connect(&conninfo, Tls::new()).await?;
        (client, pump(connection))
    } else {
        let (client, connection) = tokio_postgres::connect(&conninfo, NoTls).await?;
        (client, pump(connection))
    };
    Ok(Conn { client, notes })
}

async fn connect(p: &Params) -> R<Conn> {
    Ok(connect_as(p, &p.user, &p.password).await?)
}

async fn table(c: &Client, cols: &str) -> R<String> {
    let t = unique("t");
    c.batch_execute(&format!("CREATE TABLE {t} ({cols})")).await?;
    Ok(t)
}

async fn scalar_i64(c: &Client, sql: &str) -> R<i64> {
    Ok(c.query_one(sql, &[]).await?.get::<_, i64>(0))
}

async fn login(p: &Params, user: &str, password: &str) -> R<String> {
    let c = connect_as(p, user, password).await?;
    let got: String = c.client.query_one("SELECT current_user::text", &[]).await?.get(0);
    check(got == user, format!("current_user is {got}, expected {user}"))?;
    match connect_as(p, user, &format!("{password}-wrong")).await {
        Ok(_) => Err(Failure::Fail("login with a wrong password succeeded".into())),
        Err(e) => {
            let m = e.to_string().to_lowercase();
            check(m.contains("password") || m.contains("auth"), format!("unexpected login error: {}", describe(&e)))?;
            Ok("wrong password refused".into())
        }
    }
}

async fn run_clients<F, Fut>(n: i32, f: F) -> R<()>
where
    F: Fn(i32) -> Fut,
    Fut: std::future::Future<Output = R<()>> + Send + 'static,
{
    let handles: Vec<_> = (0..n).map(|cid| tokio::spawn(f(cid))).collect();
    let mut failed = Vec::new();
    for (cid, h) in handles.into_iter().enumerate() {
        match h.await {
            Ok(Ok(())) => {}
            Ok(Err(Failure::Fail(m))) | Ok(Err(Failure::Na(m))) => failed.push(format!("client {cid}: {m}")),
            Err(e) => failed.push(format!("client {cid}: panicked: {e}")),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Fail(format!("{}/{} clients failed; {}", failed.len(), n, failed[0])))
    }
}

async fn scenario(name: &str, p: Arc<Params>) -> R<String> {
    match name {
        "login_scram" => login(&p, &p.user, &p.password).await,
        "login_md5" => login(&p, &p.md5_user, &p.md5_password).await,

        "simple_query" => {
            let c = connect(&p).await?;
            let msgs = c.client.simple_query("SELECT 1 AS a; SELECT 'x' || 'y' AS b").await?;
            let vals: Vec<String> = msgs
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
                    _ => None,
                })
                .collect();
            check(vals == ["1", "xy"], format!("results {vals:?}"))?;
            Ok("Client::simple_query".into())
        }

        "param_query" => {
            let c = connect(&p).await?;
            let s = "héllo 'quoted' \\ \"".to_string();
            let bin: Vec<u8> = vec![0, 1, 255, b'\''];
            let row = c
                .client
                .query_one(
                    "SELECT $1::int, $2::text, $3::text, $4::bool, $5::text::numeric::text, $6::bytea",
                    &[&42i32, &s, &None::<String>, &true, &"12.345", &bin],
                )
                .await?;
            let (a, b, n, d, e, f): (i32, String, Option<String>, bool, String, Vec<u8>) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
            check(
                a == 42 && b == s && n.is_none() && d && e == "12.345" && f == bin,
                format!("round trip {a} {b:?} {n:?} {d} {e} {f:?}"),
            )?;
            Ok(String::new())
        }

        "prepared_reuse" => {
            let pp = p.clone();
            run_clients(p.clients, move |cid| {
                let p = pp.clone();
                async move {
                    let mut c = connect(&p).await?;
                    let stmt = c.client.prepare("SELECT $1::int * 2 + $2::int, $3::text").await?;
                    for j in 0..PREPARED_REUSES {
                        let tx = c.client.transaction().await?;
                        let row = tx.query_one(&stmt, &[&cid, &j, &format!("c{cid}")]).await?;
                        tx.commit().await?;
                        let (a, b): (i32, String) = (row.get(0), row.get(1));
                        check(a == cid * 2 + j && b == format!("c{cid}"), format!("client {cid} got {a} {b} at {j}"))?;
                    }
                    Ok(())
                }
            })
            .await?;
            Ok(format!("{} clients x {PREPARED_REUSES} transactions, Client::prepare", p.clients))
        }

        "transaction" => {
            let mut c = connect(&p).await?;
            let other = connect(&p).await?;
            let t = table(&c.client, "k int, v text").await?;
            let res: R<()> = async {
                let tx = c.client.transaction().await?;
                tx.execute(&*format!("INSERT INTO {t} VALUES (1, 'committed')"), &[]).await?;
                tx.commit().await?;
                let tx = c.client.transaction().await?;
                tx.execute(&*format!("INSERT INTO {t} VALUES (2, 'rolled back')"), &[]).await?;
                tx.rollback().await?;
                let rows = other.client.query(&*format!("SELECT k FROM {t} ORDER BY k"), &[]).await?;
                let ks: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
                check(ks == [1], format!("visible rows {ks:?}, expected [1]"))
            }
            .await;
            c.client.batch_execute(&format!("DROP TABLE {t}")).await?;
            res.map(|_| String::new())
        }

        "error_recovery" => {
            let mut c = connect(&p).await?;
            let t = table(&c.client, "k int, v text").await?;
            let res: R<()> = async {
                expect_state(c.client.batch_execute("SELECT 1/0").await, "22012")?;
                expect_state(c.client.query_one("SELECT $1::int / 0", &[&1i32]).await, "22012")?;
                check(scalar_i64(&c.client, "SELECT 2::int8").await? == 2, "query after error")?;
                let tx = c.client.transaction().await?;
                tx.execute(&*format!("INSERT INTO {t} VALUES (1, 'x')"), &[]).await?;
                expect_state(tx.query_one("SELECT $1::int / 0", &[&1i32]).await, "22012")?;
                expect_state(tx.query_one("SELECT 1", &[]).await, "25P02")?;
                tx.rollback().await?;
                check(scalar_i64(&c.client, "SELECT 3::int8").await? == 3, "query after rollback")?;
                let n = scalar_i64(&c.client, &format!("SELECT count(*) FROM {t}")).await?;
                check(n == 0, format!("rolled-back insert visible ({n} rows)"))
            }
            .await;
            c.client.batch_execute(&format!("DROP TABLE {t}")).await?;
            res.map(|_| String::new())
        }

        "copy_in" => {
            let c = connect(&p).await?;
            let t = table(&c.client, "k int, v text").await?;
            let res: R<()> = async {
                let mut data = String::new();
                for i in 0..ROWS_COPY {
                    let v = if i % 1000 == 0 { format!("row-{i}\\ttab\\\\back") } else { format!("row-{i}") };
                    data.push_str(&format!("{i}\t{v}\n"));
                }
                let sink = c.client.copy_in(&*format!("COPY {t} (k, v) FROM STDIN")).await?;
                pin_mut!(sink);
                sink.send(Bytes::from(data)).await?;
                let n = sink.finish().await?;
                check(n == ROWS_COPY as u64, format!("copy_in reported {n}"))?;
                let row = c.client.query_one(&*format!("SELECT count(*), sum(k) FROM {t}"), &[]).await?;
                let (cnt, sum): (i64, i64) = (row.get(0), row.get(1));
                check(cnt == ROWS_COPY as i64 && sum == (ROWS_COPY as i64) * (ROWS_COPY as i64 - 1) / 2, "count/sum")?;
                let v: String = c.client.query_one(&*format!("SELECT v FROM {t} WHERE k = 1000"), &[]).await?.get(0);
                check(v == "row-1000\ttab\\back", format!("escaped value {v:?}"))
            }
            .await;
            c.client.batch_execute(&format!("DROP TABLE {t}")).await?;
            res.map(|_| "Client::copy_in".into())
        }

        "copy_out" => {
            let c = connect(&p).await?;
            let stream = c
                .client
                .copy_out(&*format!("COPY (SELECT g, 'v' || g FROM generate_series(1, {ROWS_COPY}) g) TO STDOUT"))
                .await?;
            pin_mut!(stream);
            let mut buf = Vec::new();
            while let Some(chunk) = stream.next().await {
                buf.extend_from_slice(&chunk?);
            }
            let want: String = (1..=ROWS_COPY).map(|i| format!("{i}\tv{i}\n")).collect();
            check(buf == want.as_bytes(), format!("copy out mismatch ({} bytes)", buf.len()))?;
            Ok("Client::copy_out".into())
        }

        "large_result" => {
            let c = connect(&p).await?;
            let rows = c
                .client
                .query(&*format!("SELECT g, md5(g::text) FROM generate_series(1, {ROWS_LARGE}) g"), &[])
                .await?;
            check(rows.len() == ROWS_LARGE as usize, format!("{} rows", rows.len()))?;
            for (i, r) in rows.iter().enumerate() {
                let (g, h): (i32, String) = (r.get(0), r.get(1));
                let want = (i + 1) as i32;
                check(g == want && h == md5hex(want.to_string().as_bytes()), format!("row {want} is {g} {h}"))?;
            }
            Ok(String::new())
        }

        "large_bytea" => {
            let c = connect(&p).await?;
            let data = payload();
            let row = c
                .client
                .query_one("SELECT length(x), md5(x), x FROM (SELECT $1::bytea AS x) s", &[&data])
                .await?;
            let (n, h, back): (i32, String, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
            check(n as usize == data.len() && h == md5hex(&data), format!("server saw length {n} md5 {h}"))?;
            check(back == data, "bytes read back differ")?;
            Ok(String::new())
        }

        "listen_notify" => {
            let channel = unique("ch");
            let mut listener = connect(&p).await?;
            let sender = connect(&p).await?;
            if let Err(e) = listener.client.batch_execute(&format!("LISTEN {channel}")).await {
                // A refusal must say so: SQLSTATE 0A000 or a message naming LISTEN.
                let refused = state_of(&e) == Some("0A000") || describe(&e).to_lowercase().contains("listen");
                if p.mode == "transaction" && refused {
                    return Err(Failure::Na(format!("{LISTEN_TXN_NA}{}", describe(&e))));
                }
                return Err(e.into());
            }
            sender.client.execute("SELECT pg_notify($1, $2)", &[&channel, &"payload-1"]).await?;
            match tokio::time::timeout(Duration::from_secs(5), listener.notes.recv()).await {
                Ok(Some(n)) => {
                    check(n.channel() == channel && n.payload() == "payload-1", format!("notification {n:?}"))?;
                    Ok("notification received".into())
                }
                _ if p.mode == "transaction" => Err(Failure::Fail(LISTEN_TXN_SILENT.into())),
                _ => Err(Failure::Fail("no notification within 5s".into())),
            }
        }

        "cancel" => {
            let marker = unique("cancel");
            let c = connect(&p).await?;
            let monitor = connect(&p).await?;
            let token = c.client.cancel_token();
            let client = Arc::new(c.client);
            let runner = client.clone();
            let q = format!("SELECT pg_sleep(10) /* {marker} */");
            let task = tokio::spawn(async move { runner.batch_execute(&q).await });
            let probe = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1";
            let like = format!("%{marker} */");
            let deadline = Instant::now() + Duration::from_secs(5);
            while monitor.client.query_one(probe, &[&like]).await?.get::<_, i64>(0) == 0 {
                check(Instant::now() < deadline, "pg_sleep never showed up in pg_stat_activity")?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let t0 = Instant::now();
            if p.ssl {
                token.cancel_query(Tls::new()).await?;
            } else {
                token.cancel_query(NoTls).await?;
            }
            match tokio::time::timeout(Duration::from_secs(5), task).await {
                Ok(Ok(res)) => expect_state(res, "57014")?,
                Ok(Err(e)) => return Err(Failure::Fail(format!("query task failed: {e}"))),
                Err(_) => return Err(Failure::Fail("query still running 5s after cancel".into())),
            }
            let took = t0.elapsed().as_secs_f64();
            check(scalar_i64(&client, "SELECT 7::int8").await? == 7, "connection unusable after cancel")?;
            Ok(format!("cancelled after {took:.2}s (CancelToken::cancel_query)"))
        }

        "statement_timeout" => {
            let mut c = connect(&p).await?;
            let t0 = Instant::now();
            let tx = c.client.transaction().await?;
            tx.batch_execute("SET LOCAL statement_timeout = '100ms'").await?;
            expect_state(tx.batch_execute("SELECT pg_sleep(5)").await, "57014")?;
            tx.rollback().await?;
            check(t0.elapsed() < Duration::from_secs(3), "statement_timeout took too long")?;
            check(scalar_i64(&c.client, "SELECT 8::int8").await? == 8, "connection unusable after timeout")?;
            let st: String = c.client.query_one("SHOW statement_timeout", &[]).await?.get(0);
            check(st == "0", format!("SET LOCAL leaked: statement_timeout={st}"))?;
            Ok(String::new())
        }

        "batch" => {
            let c = connect(&p).await?;
            let t = table(&c.client, "k int, v text").await?;
            let res: R<()> = async {
                // Futures polled together are pipelined on the one connection by tokio-postgres.
                let stmt = c.client.prepare(&*format!("INSERT INTO {t} VALUES ($1, $2)")).await?;
                let rows: Vec<(i32, String)> = (0..BATCH_SIZE).map(|i| (i, format!("p{i}"))).collect();
                let params: Vec<[&(dyn ToSql + Sync); 2]> = rows.iter().map(|(k, v)| [k as _, v as _]).collect();
                future::try_join_all(params.iter().map(|ps| c.client.execute(&stmt, ps))).await?;
                let row = c.client.query_one(&*format!("SELECT count(*), sum(k) FROM {t}"), &[]).await?;
                let (cnt, sum): (i64, i64) = (row.get(0), row.get(1));
                check(cnt == BATCH_SIZE as i64 && sum == (BATCH_SIZE as i64) * (BATCH_SIZE as i64 - 1) / 2, "count/sum")?;
                let ins1 = format!("INSERT INTO {t} VALUES (-1, 'a')");
                let ins3 = format!("INSERT INTO {t} VALUES (-3, 'c')");
                let (a, b, d) = tokio::join!(
                    c.client.execute(&*ins1, &[]),
                    c.client.query_one("SELECT $1::int / 0", &[&1i32]),
                    c.client.execute(&*ins3, &[])
                );
                a?;
                d?;
                expect_state(b, "22012")?;
                check(scalar_i64(&c.client, "SELECT 9::int8").await? == 9, "connection unusable after failed pipeline")
            }
            .await;
            c.client.batch_execute(&format!("DROP TABLE {t}")).await?;
            res.map(|_| "pipelined futures (try_join_all)".into())
        }

        "pool_churn" => {
            for i in 0..p.churn {
                let c = connect(&p).await?;
                let got: i32 = c.client.query_one("SELECT $1::int", &[&i]).await?.get(0);
                check(got == i, format!("cycle {i} got {got}"))?;
            }
            Ok(format!("{} connections", p.churn))
        }

        "concurrent_clients" => {
            let admin = connect(&p).await?;
            let t = Arc::new(table(&admin.client, "cid int, i int, v text").await?);
            let (pp, tt) = (p.clone(), t.clone());
            let res = run_clients(p.clients, move |cid| {
                let (p, t) = (pp.clone(), tt.clone());
                async move {
                    let mut c = connect(&p).await?;
                    for i in 0..TXNS_PER_CLIENT {
                        let tx = c.client.transaction().await?;
                        tx.execute(&*format!("INSERT INTO {t} VALUES ($1, $2, $3)"), &[&cid, &i, &format!("c{cid}-{i}")])
                            .await?;
                        let got: i32 = tx.query_one("SELECT $1::int * 1000 + $2::int", &[&cid, &i]).await?.get(0);
                        check(got == cid * 1000 + i, format!("client {cid} got {got} at {i}"))?;
                        tx.commit().await?;
                    }
                    let rows = c.client.query(&*format!("SELECT i, v FROM {t} WHERE cid = $1 ORDER BY i"), &[&cid]).await?;
                    let got: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                    let want: Vec<(i32, String)> = (0..TXNS_PER_CLIENT).map(|i| (i, format!("c{cid}-{i}"))).collect();
                    check(got == want, format!("client {cid} rows {got:?}"))
                }
            })
            .await;
            admin.client.batch_execute(&format!("DROP TABLE {t}")).await?;
            res.map(|_| format!("{} clients", p.clients))
        }

        _ => Err(Failure::Fail("scenario not implemented by this program".into())),
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn emit(scenario: &str, status: &str, detail: &str) {
    println!(
        "{{\"driver\": {}, \"scenario\": {}, \"status\": {}, \"detail\": {}}}",
        json_str(NAME),
        json_str(scenario),
        json_str(status),
        json_str(detail)
    );
}

fn scenario_names() -> Vec<String> {
    let path = std::env::var("DRV_SCENARIOS_FILE")
        .unwrap_or_else(|_| format!("{}/../scenarios.py", env!("CARGO_MANIFEST_DIR")));
    let src = std::fs::read_to_string(&path).expect("scenarios.py");
    let start = src.find("SCENARIO_TABLE").unwrap();
    let end = start + src[start..].find("\n]\n").unwrap();
    let mut names = Vec::new();
    for line in src[start..end].lines() {
        let l = line.trim_start().trim_start_matches('(').trim_start();
        if let Some(rest) = l.strip_prefix('"') {
            if let Some(q) = rest.find("\",") {
                let name = &rest[..q];
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()) {
                    names.push(name.to_string());
                }
            }
        }
    }
    names
}

#[tokio::main]
async fn main() {
    let p = Arc::new(Params::from_env());
    println!(
        "{{\"driver\": {}, \"version\": {}}}",
        json_str(NAME),
        json_str("tokio-postgres 0.7 (Debian librust-tokio-postgres-dev)")
    );
    for name in scenario_names() {
        if !p.only.is_empty() && !p.only.contains(&name) {
            continue;
        }
        let t0 = Instant::now();
        let task = tokio::spawn(scenario_owned(name.clone(), p.clone()));
        match tokio::time::timeout(Duration::from_secs_f64(p.timeout), task).await {
            Ok(Ok(Ok(d))) => {
                let d = if d.is_empty() { "ok".to_string() } else { d };
                emit(&name, "pass", &format!("{d} ({:.2}s)", t0.elapsed().as_secs_f64()));
            }
            Ok(Ok(Err(Failure::Na(m)))) => emit(&name, "na", &m),
            Ok(Ok(Err(Failure::Fail(m)))) => emit(&name, "fail", &m),
            Ok(Err(e)) => emit(&name, "fail", &format!("panicked: {e}")),
            Err(_) => emit(&name, "fail", &format!("timed out after {:.0}s", p.timeout)),
        }
    }
    std::process::exit(0);
}

async fn scenario_owned(name: String, p: Arc<Params>) -> R<String> {
    scenario(&name, p).await
}
