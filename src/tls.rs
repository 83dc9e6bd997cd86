//! HTTPS on the HTTP port: rustls, with ALPN offering HTTP/2 and HTTP/1.1, in front of the
//! same router as plain HTTP.
//!
//! Browsers open at most six HTTP/1.1 connections to a host, and each SSE stream occupies one;
//! over HTTP/2 every stream of a page shares one connection. Browsers speak HTTP/2 only
//! over TLS, which is why this listener exists.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {key} file {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key} file {path} holds no {what}")]
    Empty {
        key: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("invalid certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the TLS acceptor from the PEM files `http.tls.cert` and `http.tls.key`.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let certificates = rustls_pemfile::certs(&mut read_pem("http.tls.cert", &config.cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| read_error("http.tls.cert", &config.cert, source))?;
    if certificates.is_empty() {
        return Err(empty("http.tls.cert", &config.cert, "certificate"));
    }
    let key = rustls_pemfile::private_key(&mut read_pem("http.tls.key", &config.key)?.as_slice())
        .map_err(|source| read_error("http.tls.key", &config.key, source))?
        .ok_or_else(|| empty("http.tls.key", &config.key, "private key"))?;

    // NOTE: rustls 0.23.48 deprecates the ring provider because it has no post-quantum key
    // exchange. The aws-lc-rs provider has one, but it needs a CMake build of a C library.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certificates, key)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| read_error(key, path, source))
}

fn read_error(key: &'static str, path: &Path, source: std::io::Error) -> TlsError {
    TlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    }
}

fn empty(key: &'static str, path: &Path, what: &'static str) -> TlsError {
    TlsError::Empty {
        key,
        path: path.to_path_buf(),
        what,
    }
}
