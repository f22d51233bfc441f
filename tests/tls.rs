//! TLS on both sides: a requester speaks HTTPS to soapcache (`--tls-cert`,
//! `--tls-key`), soapcache speaks HTTPS to the service (`--upstream-ca`),
//! all with certificates from a test CA generated here (rcgen).

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::*;

struct TestPki {
    dir: PathBuf,
    ca_pem: String,
    leaf_pem: String,
    leaf_key_pem: String,
}

impl TestPki {
    fn new() -> TestPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "soapcache-tls-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = TestPki {
            dir,
            ca_pem: ca.pem(),
            leaf_pem: leaf.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
        };
        std::fs::write(pki.path("ca.pem"), &pki.ca_pem).unwrap();
        std::fs::write(pki.path("cert.pem"), &pki.leaf_pem).unwrap();
        std::fs::write(pki.path("key.pem"), &pki.leaf_key_pem).unwrap();
        pki
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let certs = vec![CertificateDer::from_pem_slice(self.leaf_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(self.leaf_key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        Arc::new(config)
    }

    fn client_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTPS catalog service; returns its port and request counter.
async fn https_catalog(pki: &TestPki) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config());
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let answer = catalog_response(&part_of(&body), &in_one_hour());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(answer),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, count)
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_on_the_listener_and_to_the_upstream_with_a_private_ca() {
    let pki = TestPki::new();
    let (port, upstream_count) = https_catalog(&pki).await;
    let proxy = Soapcache::serve(&[
        "--upstream",
        &format!("https://localhost:{port}"),
        "--upstream-ca",
        &pki.path("ca.pem"),
        "--tls-cert",
        &pki.path("cert.pem"),
        "--tls-key",
        &pki.path("key.pem"),
    ]);

    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(pki.client_config())
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let url = format!("https://localhost:{}/catalog", proxy.proxy.port());
    let mut seen = Vec::new();
    for _ in 0..2 {
        let request = hyper::Request::post(&url)
            .header("content-type", "text/xml; charset=utf-8")
            .body(Full::new(Bytes::from(catalog_request("TLS-1"))))
            .unwrap();
        let response = client.request(request).await.expect("HTTPS to soapcache");
        assert_eq!(response.status(), 200);
        let x_cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("<c:PartNumber>TLS-1</c:PartNumber>"));
        seen.push(x_cache);
    }
    assert_eq!(seen, ["MISS", "HIT"]);
    assert_eq!(upstream_count.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_certificate_from_an_unknown_ca_is_refused_with_a_502() {
    let pki = TestPki::new();
    let (port, upstream_count) = https_catalog(&pki).await;
    // No --upstream-ca: the test CA is not trusted.
    let proxy = Soapcache::serve(&["--upstream", &format!("https://localhost:{port}")]);
    let answer = Http::default()
        .soap(&proxy.url("/"), &catalog_request("TLS-2"))
        .await;
    assert_eq!(answer.status, 502);
    assert!(
        answer.text().to_lowercase().contains("certificate"),
        "{}",
        answer.text()
    );
    assert_eq!(upstream_count.load(Ordering::SeqCst), 0);
}

#[test]
fn a_missing_certificate_file_is_one_clear_startup_error() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_soapcache"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:1",
        ])
        .args([
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--tls-cert /nonexistent/cert.pem"),
        "{stderr}"
    );
}
