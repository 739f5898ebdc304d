//! A Spin host for the demo and the tests: serves a Spin HTTP component (WASI 0.2 `wasi:http`) under
//! wasmtime and wasmtime-wasi-http the way Spin does, as far as our component needs:
//!
//! - the app is read from `spin.toml` (manifest version 2): HTTP routes, application
//!   variables (defaults, `required`, overrides like `spin up --variable`), component
//!   variables as `{{ name }}` templates, `key_value_stores`, `allowed_outbound_hosts`;
//! - every request gets a fresh instance, as in Spin;
//! - `wasi:keyvalue/store` and `wasi:keyvalue/atomics` (`0.2.0-draft2`, with
//!   compare-and-swap) are an in-memory store shared by all instances, and
//!   `fermyon:spin/variables@2.0.0` answers the component's variables;
//! - outbound HTTP goes only to allowed hosts; HTTPS pins one certificate fingerprint
//!   (the merger's self-signed one), where Spin would use its CA roots or `client_tls`.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::WasiHttpCtx;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostFutureIncomingResponse, IncomingResponse, OutgoingRequestConfig};
use wasmtime_wasi_http::p2::{HttpResult, WasiHttpCtxView, WasiHttpHooks, WasiHttpView, hyper_request_error};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "tally:spin-host/spin-host",
        with: {
            "wasi:keyvalue/store.bucket": super::OpenBucket,
            "wasi:keyvalue/atomics.cas": super::CasHandle,
        },
    });
}

use bindings::fermyon::spin::variables;
use bindings::wasi::keyvalue::{atomics, store};

/// Why an app cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SpinError {
    /// `spin.toml` could not be read or parsed.
    #[error("spin.toml: {0}")]
    Manifest(String),
    /// A variable is required but has no value, or a template names an unknown one.
    #[error("variable `{0}`: {1}")]
    Variable(String, String),
    /// wasmtime refused the component or its imports.
    #[error("component: {0}")]
    Wasm(#[from] wasmtime::Error),
    /// The outbound TLS configuration could not be built.
    #[error("tls: {0}")]
    Tls(String),
    /// The listener could not be bound.
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Deserialize)]
struct Manifest {
    spin_manifest_version: u32,
    #[serde(default)]
    variables: BTreeMap<String, VariableDecl>,
    trigger: Triggers,
    component: BTreeMap<String, ComponentDecl>,
}

#[derive(Deserialize)]
struct VariableDecl {
    default: Option<String>,
    #[serde(default)]
    required: bool,
}

#[derive(Deserialize)]
struct Triggers {
    http: Vec<HttpTrigger>,
}

#[derive(Deserialize)]
struct HttpTrigger {
    route: String,
    component: String,
}

#[derive(Deserialize)]
struct ComponentDecl {
    source: String,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
}

/// The parts of `spin.toml` the host acts on, resolved for one component.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The component's `source` as written (what `spin build` produces).
    pub source: String,
    /// Routes that reach the component (`/...` suffix: prefix match).
    pub routes: Vec<String>,
    /// Component variables, templates expanded.
    pub variables: HashMap<String, String>,
    /// Key-value store labels the component may open.
    pub stores: Vec<String>,
    /// Outbound destinations, templates expanded: `scheme://host:port`.
    pub outbound: Vec<String>,
}

impl AppConfig {
    /// Reads `spin.toml` for `component`, with application variables set as by
    /// `spin up --variable name=value`.
    pub fn load(manifest: &Path, component: &str, set: &[(&str, &str)]) -> Result<AppConfig, SpinError> {
        let text = std::fs::read_to_string(manifest).map_err(|e| SpinError::Manifest(e.to_string()))?;
        Self::parse(&text, component, set)
    }

    /// Like [`AppConfig::load`], from the manifest's text.
    pub fn parse(text: &str, component: &str, set: &[(&str, &str)]) -> Result<AppConfig, SpinError> {
        let m: Manifest = toml::from_str(text).map_err(|e| SpinError::Manifest(e.to_string()))?;
        if m.spin_manifest_version != 2 {
            return Err(SpinError::Manifest(format!(
                "spin_manifest_version {} (only 2 is supported)",
                m.spin_manifest_version
            )));
        }
        if let Some((n, _)) = set.iter().find(|(n, _)| !m.variables.contains_key(*n)) {
            return Err(SpinError::Variable(
                n.to_string(),
                "is not declared in [variables]".into(),
            ));
        }
        let mut app = HashMap::new();
        for (name, decl) in &m.variables {
            let given = set.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_string());
            match given.or_else(|| decl.default.clone()) {
                Some(v) => {
                    app.insert(name.clone(), v);
                }
                None if decl.required => return Err(SpinError::Variable(name.clone(), "is required".into())),
                None => {}
            }
        }
        let c = m
            .component
            .get(component)
            .ok_or_else(|| SpinError::Manifest(format!("no [component.{component}]")))?;
        let expand = |t: &str| expand(t, &app);
        Ok(AppConfig {
            source: c.source.clone(),
            routes: m
                .trigger
                .http
                .iter()
                .filter(|t| t.component == component)
                .map(|t| t.route.clone())
                .collect(),
            variables: c
                .variables
                .iter()
                .map(|(k, t)| Ok((k.clone(), expand(t)?)))
                .collect::<Result<_, SpinError>>()?,
            stores: c.key_value_stores.clone(),
            outbound: c
                .allowed_outbound_hosts
                .iter()
                .map(|t| expand(t))
                .collect::<Result<_, _>>()?,
        })
    }

    fn routes_to(&self, path: &str) -> bool {
        self.routes.iter().any(|r| match r.strip_suffix("/...") {
            Some(prefix) => path == prefix || path.starts_with(&format!("{prefix}/")),
            None => path == r,
        })
    }

    /// Whether the component may send a request to `scheme://host:port`.
    pub fn may_reach(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.outbound.iter().any(|allowed| {
            let Some((s, rest)) = allowed.split_once("://") else {
                return false;
            };
            let default_port = if s == "https" { 443 } else { 80 };
            let rest = rest.trim_end_matches('/');
            let (h, p): (&str, Option<u16>) = match rest.rsplit_once(':') {
                Some((h, "*")) => (h, None),
                Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse().ok()),
                _ => (rest, Some(default_port)),
            };
            let h = h.trim_matches(['[', ']']);
            (s == "*" || s == scheme) && (h == "*" || h.eq_ignore_ascii_case(host)) && p.is_none_or(|p| p == port)
        })
    }
}

/// Expands `{{ name }}` templates with application variables.
fn expand(template: &str, vars: &HashMap<String, String>) -> Result<String, SpinError> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("}}")
            .ok_or_else(|| SpinError::Manifest(format!("unclosed template in {template:?}")))?;
        let name = rest[start + 2..start + end].trim();
        let value = vars
            .get(name)
            .ok_or_else(|| SpinError::Variable(name.into(), format!("used in {template:?} but has no value")))?;
        out.push_str(value);
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Keys per `list-keys` page.
const KEYS_PAGE: usize = 100;

/// The key-value stores of a served app, shared by all its instances; tests read it.
/// Every write gives the key a new version, which compare-and-swap checks.
#[derive(Debug, Default)]
pub struct KeyValue {
    inner: Mutex<Stores>,
}

#[derive(Debug, Default)]
struct Stores {
    by_label: HashMap<String, BTreeMap<String, (u64, Vec<u8>)>>,
    version: u64,
}

impl Stores {
    fn store(&mut self, label: &str) -> &mut BTreeMap<String, (u64, Vec<u8>)> {
        self.by_label.entry(label.to_owned()).or_default()
    }

    fn put(&mut self, label: &str, key: String, value: Vec<u8>) {
        self.version += 1;
        let v = self.version;
        self.store(label).insert(key, (v, value));
    }
}

impl KeyValue {
    fn with<R>(&self, f: impl FnOnce(&mut Stores) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The keys of store `label`.
    pub fn keys(&self, label: &str) -> Vec<String> {
        self.with(|s| s.store(label).keys().cloned().collect())
    }

    /// A value of store `label`.
    pub fn get(&self, label: &str, key: &str) -> Option<Vec<u8>> {
        self.with(|s| s.store(label).get(key).map(|(_, v)| v.clone()))
    }

    /// Sets a value (a test stands in for an earlier request).
    pub fn set(&self, label: &str, key: &str, value: Vec<u8>) {
        self.with(|s| s.put(label, key.to_owned(), value));
    }
}

/// An open store (bucket) inside an instance.
pub struct OpenBucket {
    label: String,
}

/// A compare-and-swap handle: the key, and the version (0: absent) and value it read.
pub struct CasHandle {
    label: String,
    key: String,
    version: u64,
    value: Option<Vec<u8>>,
}

/// Outbound HTTP policy and TLS of a served app.
#[derive(Clone)]
struct Outbound {
    config: Arc<AppConfig>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// One instance's host state.
pub struct SpinState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: Outbound,
    kv: Arc<KeyValue>,
}

impl WasiView for SpinState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for SpinState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl SpinState {
    fn bucket(&self, b: &Resource<OpenBucket>) -> Result<String, store::Error> {
        self.table
            .get(b)
            .map(|b| b.label.clone())
            .map_err(|e| store::Error::Other(e.to_string()))
    }
}

impl store::Host for SpinState {
    fn open(&mut self, identifier: String) -> Result<Resource<OpenBucket>, store::Error> {
        if !self.outbound.config.stores.contains(&identifier) {
            return Err(store::Error::AccessDenied);
        }
        self.table
            .push(OpenBucket { label: identifier })
            .map_err(|e| store::Error::Other(e.to_string()))
    }
}

impl store::HostBucket for SpinState {
    fn get(&mut self, b: Resource<OpenBucket>, key: String) -> Result<Option<Vec<u8>>, store::Error> {
        let label = self.bucket(&b)?;
        Ok(self.kv.get(&label, &key))
    }

    fn set(&mut self, b: Resource<OpenBucket>, key: String, value: Vec<u8>) -> Result<(), store::Error> {
        let label = self.bucket(&b)?;
        self.kv.with(|s| s.put(&label, key, value));
        Ok(())
    }

    fn delete(&mut self, b: Resource<OpenBucket>, key: String) -> Result<(), store::Error> {
        let label = self.bucket(&b)?;
        self.kv.with(|s| s.store(&label).remove(&key));
        Ok(())
    }

    fn exists(&mut self, b: Resource<OpenBucket>, key: String) -> Result<bool, store::Error> {
        let label = self.bucket(&b)?;
        Ok(self.kv.with(|s| s.store(&label).contains_key(&key)))
    }

    fn list_keys(
        &mut self,
        b: Resource<OpenBucket>,
        cursor: Option<String>,
    ) -> Result<store::KeyResponse, store::Error> {
        let label = self.bucket(&b)?;
        Ok(self.kv.with(|s| {
            let all = s.store(&label);
            let after = |k: &&String| cursor.as_ref().is_none_or(|c| *k > c);
            let keys: Vec<String> = all.keys().filter(after).take(KEYS_PAGE + 1).cloned().collect();
            let more = keys.len() > KEYS_PAGE;
            let keys: Vec<String> = keys.into_iter().take(KEYS_PAGE).collect();
            store::KeyResponse {
                cursor: if more { keys.last().cloned() } else { None },
                keys,
            }
        }))
    }

    fn drop(&mut self, b: Resource<OpenBucket>) -> wasmtime::Result<()> {
        self.table.delete(b)?;
        Ok(())
    }
}

impl atomics::Host for SpinState {
    fn increment(&mut self, b: Resource<OpenBucket>, key: String, delta: i64) -> Result<i64, store::Error> {
        let label = self.bucket(&b)?;
        self.kv.with(|s| {
            let now = match s.store(&label).get(&key) {
                None => 0,
                Some((_, v)) => i64::from_le_bytes(
                    v.as_slice()
                        .try_into()
                        .map_err(|_| store::Error::Other(format!("{key} does not hold a counter")))?,
                ),
            };
            let next = now.wrapping_add(delta);
            s.put(&label, key, next.to_le_bytes().to_vec());
            Ok(next)
        })
    }

    fn swap(&mut self, cas: Resource<CasHandle>, value: Vec<u8>) -> Result<(), atomics::CasError> {
        let (label, key, version) = match self.table.get(&cas) {
            Ok(c) => (c.label.clone(), c.key.clone(), c.version),
            Err(e) => return Err(atomics::CasError::StoreError(store::Error::Other(e.to_string()))),
        };
        let swapped = self.kv.with(|s| {
            let current = s.store(&label).get(&key).map_or(0, |(v, _)| *v);
            if current == version {
                s.put(&label, key, value);
                true
            } else {
                false
            }
        });
        if !swapped {
            return Err(atomics::CasError::CasFailed(cas));
        }
        let _ = self.table.delete(cas);
        Ok(())
    }
}

impl atomics::HostCas for SpinState {
    fn new(&mut self, b: Resource<OpenBucket>, key: String) -> Result<Resource<CasHandle>, store::Error> {
        let label = self.bucket(&b)?;
        let (version, value) = self.kv.with(|s| match s.store(&label).get(&key) {
            Some((v, value)) => (*v, Some(value.clone())),
            None => (0, None),
        });
        self.table
            .push(CasHandle {
                label,
                key,
                version,
                value,
            })
            .map_err(|e| store::Error::Other(e.to_string()))
    }

    fn current(&mut self, cas: Resource<CasHandle>) -> Result<Option<Vec<u8>>, store::Error> {
        self.table
            .get(&cas)
            .map(|c| c.value.clone())
            .map_err(|e| store::Error::Other(e.to_string()))
    }

    fn drop(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl variables::Host for SpinState {
    fn get(&mut self, name: String) -> Result<String, variables::Error> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(variables::Error::InvalidName(name));
        }
        self.outbound
            .config
            .variables
            .get(&name)
            .cloned()
            .ok_or(variables::Error::Undefined(name))
    }
}

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: hyper::Request<HyperOutgoingBody>,
        config: OutgoingRequestConfig,
    ) -> HttpResult<HostFutureIncomingResponse> {
        let scheme = if config.use_tls { "https" } else { "http" };
        let (host, port) = match request.uri().authority() {
            Some(a) => (
                a.host().trim_matches(['[', ']']).to_owned(),
                a.port_u16().unwrap_or(if config.use_tls { 443 } else { 80 }),
            ),
            None => {
                return Ok(HostFutureIncomingResponse::ready(Ok(Err(
                    ErrorCode::HttpRequestUriInvalid,
                ))));
            }
        };
        if !self.config.may_reach(scheme, &host, port) {
            return Ok(HostFutureIncomingResponse::ready(Ok(Err(ErrorCode::HttpRequestDenied))));
        }
        let tls = self.tls.clone();
        let task = wasmtime_wasi::runtime::spawn(async move { Ok(send(request, config, host, port, tls).await) });
        Ok(HostFutureIncomingResponse::pending(task))
    }
}

/// Sends one outbound request over a fresh connection.
async fn send(
    mut request: hyper::Request<HyperOutgoingBody>,
    config: OutgoingRequestConfig,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<IncomingResponse, ErrorCode> {
    let tcp = timeout(config.connect_timeout, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| ErrorCode::ConnectionTimeout)?
        .map_err(|_| ErrorCode::ConnectionRefused)?;
    if let Some(a) = request.uri().authority().cloned()
        && !request.headers().contains_key(hyper::header::HOST)
        && let Ok(v) = hyper::header::HeaderValue::from_str(a.as_str())
    {
        request.headers_mut().insert(hyper::header::HOST, v);
    }
    // On the wire the request line carries only the path.
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();
    *request.uri_mut() = path.parse().map_err(|_| ErrorCode::HttpRequestUriInvalid)?;
    if !config.use_tls {
        return exchange(tcp, request, &config).await;
    }
    let tls = tls.ok_or(ErrorCode::TlsCertificateError)?;
    let name = rustls::pki_types::ServerName::try_from(host).map_err(|_| ErrorCode::HttpRequestUriInvalid)?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|_| ErrorCode::TlsProtocolError)?;
    exchange(stream, request, &config).await
}

async fn exchange<S>(
    stream: S,
    request: hyper::Request<HyperOutgoingBody>,
    config: &OutgoingRequestConfig,
) -> Result<IncomingResponse, ErrorCode>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = timeout(
        config.connect_timeout,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| ErrorCode::ConnectionTimeout)?
    .map_err(hyper_request_error)?;
    let worker = wasmtime_wasi::runtime::spawn(async move {
        let _ = conn.await;
    });
    let resp = timeout(config.first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| ErrorCode::ConnectionReadTimeout)?
        .map_err(hyper_request_error)?
        .map(|body| body.map_err(hyper_request_error).boxed_unsync());
    Ok(IncomingResponse {
        resp,
        worker: Some(worker),
        between_bytes_timeout: config.between_bytes_timeout,
    })
}

struct App {
    pre: ProxyPre<SpinState>,
    outbound: Outbound,
    kv: Arc<KeyValue>,
}

/// A Spin app being served on loopback.
pub struct RunningApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its key-value stores.
    pub kv: Arc<KeyValue>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Compiles `wasm` and serves it on `127.0.0.1:0` as the app `config` describes. HTTPS
/// requests the component sends are verified against `pin` (a certificate fingerprint).
pub async fn serve(wasm: &[u8], config: AppConfig, pin: Option<&str>) -> Result<RunningApp, SpinError> {
    let engine = Engine::new(&wasmtime::Config::new())?;
    let component = Component::new(&engine, wasm)?;
    let mut linker: Linker<SpinState> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    bindings::SpinHost::add_to_linker::<SpinState, HasSelf<SpinState>>(&mut linker, |s| s)?;
    let pre = ProxyPre::new(linker.instantiate_pre(&component)?)?;
    let tls = match pin {
        Some(p) => Some(tally_link::tls::https_client_config(p).map_err(|e| SpinError::Tls(e.to_string()))?),
        None => None,
    };
    let kv = Arc::new(KeyValue::default());
    let app = Arc::new(App {
        pre,
        outbound: Outbound {
            config: Arc::new(config),
            tls,
        },
        kv: kv.clone(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((conn, peer)) = listener.accept().await {
            let app = app.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(handle(app, peer, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(conn), service)
                    .await;
            });
        }
    });
    Ok(RunningApp { addr, kv, task })
}

fn plain(status: u16, text: &str) -> hyper::Response<HyperOutgoingBody> {
    let mut r = hyper::Response::new(
        Full::new(Bytes::from(text.to_owned()))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// Serves one request with a fresh instance, as Spin does.
async fn handle(
    app: Arc<App>,
    peer: SocketAddr,
    mut req: hyper::Request<Incoming>,
) -> hyper::Response<HyperOutgoingBody> {
    if !app.outbound.config.routes_to(req.uri().path()) {
        return plain(404, "Not Found");
    }
    let full_url = format!(
        "http://{}{}",
        req.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or(""),
        req.uri()
    );
    for (name, value) in [("spin-client-addr", peer.to_string()), ("spin-full-url", full_url)] {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&value) {
            req.headers_mut().insert(name, v);
        }
    }
    let mut store = Store::new(
        app.pre.engine(),
        SpinState {
            wasi: WasiCtx::builder().inherit_stderr().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            outbound: app.outbound.clone(),
            kv: app.kv.clone(),
        },
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    let prepared = (|| -> wasmtime::Result<_> {
        let req = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(tx)?;
        Ok((req, out))
    })();
    let (wasm_req, out) = match prepared {
        Ok(p) => p,
        Err(e) => return plain(500, &format!("host: {e}")),
    };
    let pre = app.pre.clone();
    let task = tokio::spawn(async move {
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, wasm_req, out)
            .await
    });
    match rx.await {
        Ok(Ok(resp)) => resp,
        Ok(Err(code)) => plain(500, &format!("component error: {code:?}")),
        Err(_) => {
            let why = match task.await {
                Ok(Ok(())) => "the component never set a response".to_owned(),
                Ok(Err(e)) => format!("the component trapped: {e:?}"),
                Err(e) => format!("the instance task failed: {e}"),
            };
            plain(500, &why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(outbound: &[&str]) -> AppConfig {
        AppConfig {
            source: String::new(),
            routes: vec!["/v1/events".into(), "/v1/videos/...".into()],
            variables: HashMap::new(),
            stores: vec![],
            outbound: outbound.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn routes_match_exactly_or_by_prefix() {
        let c = config(&[]);
        assert!(c.routes_to("/v1/events"));
        assert!(!c.routes_to("/v1/events/x"));
        assert!(c.routes_to("/v1/videos/a/stats"));
        assert!(!c.routes_to("/v1/videosx"));
        assert!(!c.routes_to("/"));
    }

    #[test]
    fn outbound_hosts_are_checked() {
        let c = config(&["https://127.0.0.1:8443", "http://example.com"]);
        assert!(c.may_reach("https", "127.0.0.1", 8443));
        assert!(!c.may_reach("https", "127.0.0.1", 8444));
        assert!(!c.may_reach("http", "127.0.0.1", 8443));
        assert!(c.may_reach("http", "example.com", 80));
        assert!(!c.may_reach("http", "example.org", 80));
    }

    #[test]
    fn templates_expand_and_unknown_names_are_errors() {
        let vars: HashMap<String, String> = [("host".to_string(), "h:1".to_string())].into();
        assert_eq!(expand("https://{{ host }}/x", &vars).unwrap(), "https://h:1/x");
        assert!(matches!(expand("{{nope}}", &vars), Err(SpinError::Variable(n, _)) if n == "nope"));
        assert!(expand("{{ host", &vars).is_err());
    }
}
