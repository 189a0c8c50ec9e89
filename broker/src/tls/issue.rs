//! A throw-away certificate authority and node certificates (rcgen, ECDSA P-256), so that
//! `strata dev` and the tests run the same mutually authenticated peer path as a production
//! cluster with no setup. A production cluster brings its own CA; its node certificates
//! need only the DNS name [`super::node_name`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::{TlsFiles, node_name};
use crate::error::{Error, Result};

fn failed(e: rcgen::Error) -> Error {
    Error::Config(format!("cannot issue a certificate: {e}"))
}

/// A certificate authority held in memory.
pub struct ClusterCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA with a fresh key.
    pub fn generate() -> Result<ClusterCa> {
        let mut params = CertificateParams::new(Vec::new()).map_err(failed)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(DnType::CommonName, "Strata cluster CA (throw-away)");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(failed)?;
        let cert = params.self_signed(&key).map_err(failed)?;
        Ok(ClusterCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA's certificate (PEM).
    pub fn certificate_pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for node `id` (usable as server and as client), and its private key:
    /// both PEM.
    pub fn node_certificate(&self, id: u64) -> Result<(String, String)> {
        self.certificate(&[node_name(id)])
    }

    /// A certificate for the given DNS names or IP addresses (usable as server and as
    /// client), and its private key: both PEM.
    pub fn certificate(&self, names: &[String]) -> Result<(String, String)> {
        let mut params = CertificateParams::new(names.to_vec()).map_err(failed)?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(failed)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(failed)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Writes `contents` to `path`, readable by its owner only (keys, passwords).
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| Error::io(path, e))
}

impl ClusterCa {
    /// Writes the CA's certificate and a new certificate for each of `nodes` in `dir`
    /// (`ca.pem`, `node-<id>.pem`, `node-<id>-key.pem`); the CA's key is not written.
    /// Returns each node's files.
    pub fn write_files(&self, dir: &Path, nodes: &[u64]) -> Result<BTreeMap<u64, TlsFiles>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let ca_path = dir.join("ca.pem");
        write_private(&ca_path, self.certificate_pem())?;
        let mut files = BTreeMap::new();
        for &id in nodes {
            let (cert, key) = self.node_certificate(id)?;
            let cert_path = dir.join(format!("node-{id}.pem"));
            let key_path = dir.join(format!("node-{id}-key.pem"));
            write_private(&cert_path, &cert)?;
            write_private(&key_path, &key)?;
            files.insert(
                id,
                TlsFiles {
                    ca: ca_path.clone(),
                    cert: cert_path,
                    key: key_path,
                },
            );
        }
        Ok(files)
    }
}

impl ClusterCa {
    /// Writes a certificate for `names` and its key to `<dir>/<stem>.pem` and
    /// `<dir>/<stem>-key.pem`; their paths.
    pub fn write_certificate(
        &self,
        dir: &Path,
        stem: &str,
        names: &[String],
    ) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let (cert, key) = self.certificate(names)?;
        let paths = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}-key.pem")),
        );
        write_private(&paths.0, &cert)?;
        write_private(&paths.1, &key)?;
        Ok(paths)
    }
}
