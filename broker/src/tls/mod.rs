//! TLS. Of the client listener: [`client_listener`]. Between nodes: the PEM files a node is given ([`TlsFiles`]), the rustls configurations
//! tonic serves and connects with ([`PeerTls`]), the name a node's certificate carries
//! ([`node_name`]), and the gate of the peer listener ([`PeerGate`]), which admits a
//! connection only with a certificate from the cluster's CA naming a member and tells every
//! request which node sent it ([`PeerCaller`]). `issue` makes a throw-away CA and node
//! certificates (rcgen) for `strata dev` and tests.
//!
//! A node's certificate names it with the DNS name `node-<id>.strata` in its subject
//! alternative names. The node checks both directions: connecting to peer N, it accepts only
//! a server certificate for `node-N.strata`; accepting a connection, it requires a client
//! certificate that chains to the CA (rustls) and names a member (here), and the Raft service
//! then checks that each message's sender is that member.

mod issue;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use crate::error::{Error, Result};

pub use issue::{ClusterCa, write_private};

/// How long a TLS handshake may take before the connection is dropped (a client that opens
/// connections and never completes one holds nothing for longer).
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Makes the process's TLS (rustls with ring) offer and prefer AES-128-GCM over AES-256-GCM:
/// both are safe, and the 128-bit one costs less CPU per byte on a node that encrypts every
/// record once per hop. Called before any TLS configuration is built; later calls (more
/// nodes in one process) change nothing.
pub fn prefer_aes128() {
    use rustls::CipherSuite;
    // The provider tonic's `tls-ring` builds with anyway (rustls deprecates it only for its
    // lack of post-quantum key exchange, which needs aws-lc-rs and cmake).
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| match s.suite() {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        _ => 2,
    });
    let _ = provider.install_default();
}

/// The DNS name in node `id`'s certificate.
pub fn node_name(id: u64) -> String {
    format!("node-{id}.strata")
}

/// The PEM files of one TLS identity: the CA that signs every node's certificate, this node's
/// certificate (chain) and its private key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA's certificate.
    pub ca: PathBuf,
    /// This node's certificate, optionally followed by intermediates.
    pub cert: PathBuf,
    /// This node's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read the {what} {}: {e}", path.display())))
}

fn not_pem(path: &Path, what: &str, e: &dyn std::fmt::Display) -> Error {
    Error::Config(format!("{} is not a PEM {what}: {e}", path.display()))
}

/// The identity in a certificate and a key file, each checked to parse (so that a bad file
/// fails the start, not the first connection), and the certificate itself.
fn load_identity(cert: &Path, key: &Path) -> Result<(Identity, CertificateDer<'static>)> {
    let cert_pem = read(cert, "certificate")?;
    let key_pem = read(key, "private key")?;
    let own =
        CertificateDer::from_pem_slice(&cert_pem).map_err(|e| not_pem(cert, "certificate", &e))?;
    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| not_pem(key, "private key", &e))?;
    Ok((Identity::from_pem(cert_pem, key_pem), own))
}

/// A node's peer TLS material, loaded and checked.
#[derive(Clone)]
pub struct PeerTls {
    ca: Certificate,
    identity: Identity,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Reads `files` and checks them: each parses, and the certificate names node `node_id`
    /// (see [`node_name`]), so that a misconfigured node fails at start, not at its first
    /// connection.
    pub fn load(files: &TlsFiles, node_id: u64) -> Result<PeerTls> {
        let ca = read(&files.ca, "CA certificate")?;
        if CertificateDer::pem_slice_iter(&ca).next().is_none() {
            return Err(not_pem(&files.ca, "certificate", &"no certificate in it"));
        }
        let (identity, own) = load_identity(&files.cert, &files.key)?;
        if node_of(&own, &[node_id]).is_none() {
            return Err(Error::Config(format!(
                "the certificate {} does not name this node: it needs the DNS name {} \
                 among its subject alternative names",
                files.cert.display(),
                node_name(node_id)
            )));
        }
        Ok(PeerTls {
            ca: Certificate::from_pem(ca),
            identity,
        })
    }

    /// The peer listener's configuration: this node's identity, and a client certificate
    /// from the CA required of every connection.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .ignore_client_order(true)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// The configuration for connecting to peer `peer`: its certificate must be from the CA
    /// and name it; this node presents its own.
    pub fn client(&self, peer: u64) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(node_name(peer))
            .timeout(HANDSHAKE_TIMEOUT)
    }
}

/// The client listener's TLS configuration from its certificate and key files (checked to
/// parse, so that a bad file fails the start).
pub fn client_listener(cert: &Path, key: &Path) -> Result<ServerTlsConfig> {
    let (identity, _) = load_identity(cert, key)?;
    Ok(ServerTlsConfig::new()
        .identity(identity)
        .ignore_client_order(true)
        .timeout(HANDSHAKE_TIMEOUT))
}

/// The member among `members` that `cert` names, if any. The certificate's chain to the CA
/// is rustls's check; this one is about the name only.
pub fn node_of(cert: &CertificateDer<'_>, members: &[u64]) -> Option<u64> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    members.iter().copied().find(|id| {
        ServerName::try_from(node_name(*id))
            .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
    })
}

/// Who sent a request to the peer listener, as its gate established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCaller {
    /// A member, authenticated by its certificate.
    Node(u64),
    /// Peer TLS is off (`insecure_peers` or a loopback cluster): the sender is not known.
    Unverified,
}

impl PeerCaller {
    /// The caller of `request` if it came through the peer listener's gate; `None` for a
    /// request from the client listener.
    pub fn of<T>(request: &Request<T>) -> Option<PeerCaller> {
        request.extensions().get::<PeerCaller>().copied()
    }

    /// Checks that a message claiming to come from node `sender` did: refused with
    /// `PERMISSION_DENIED` when the certificate names another node.
    pub fn check_sender(self, sender: u64) -> std::result::Result<(), Status> {
        match self {
            PeerCaller::Node(node) if node != sender => Err(Status::permission_denied(format!(
                "a message from node {sender} came over the connection of node {node}"
            ))),
            _ => Ok(()),
        }
    }
}

/// The peer listener's interceptor: with TLS on, a request is let through only if the
/// connection's client certificate names a member (`UNAUTHENTICATED` otherwise), and it
/// carries a [`PeerCaller`] either way.
#[derive(Debug, Clone)]
pub struct PeerGate {
    members: Arc<[u64]>,
    verify: bool,
}

impl PeerGate {
    /// A gate admitting `members`; `verify` is whether peer TLS is on.
    pub fn new(members: impl IntoIterator<Item = u64>, verify: bool) -> PeerGate {
        PeerGate {
            members: members.into_iter().collect(),
            verify,
        }
    }
}

impl tonic::service::Interceptor for PeerGate {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        let caller = if self.verify {
            let certs = request
                .peer_certs()
                .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
            let node = certs
                .first()
                .and_then(|cert| node_of(cert, &self.members))
                .ok_or_else(|| {
                    Status::unauthenticated(
                        "the client certificate names no member of this cluster",
                    )
                })?;
            PeerCaller::Node(node)
        } else {
            PeerCaller::Unverified
        };
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_names_its_node_and_no_other() {
        let ca = ClusterCa::generate().unwrap();
        let (cert, _key) = ca.node_certificate(2).unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(node_of(&der, &[1, 2, 3]), Some(2));
        assert_eq!(node_of(&der, &[1, 3]), None);
        assert_eq!(node_of(&der, &[22]), None, "node-22 is not node-2");
    }

    #[test]
    fn loading_checks_the_files_name_this_node() {
        let dir = tempfile::tempdir().unwrap();
        let files = ClusterCa::generate()
            .unwrap()
            .write_files(dir.path(), &[1, 2])
            .unwrap();
        PeerTls::load(&files[&1], 1).unwrap();
        let err = PeerTls::load(&files[&1], 2).unwrap_err().to_string();
        assert!(err.contains("node-2.strata"), "{err}");
        let missing = TlsFiles {
            key: dir.path().join("nope.pem"),
            ..files[&1].clone()
        };
        let err = PeerTls::load(&missing, 1).unwrap_err().to_string();
        assert!(err.contains("nope.pem"), "{err}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not pem").unwrap();
        let err = PeerTls::load(
            &TlsFiles {
                cert: garbage,
                ..files[&1].clone()
            },
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("garbage.pem"), "{err}");
    }

    #[test]
    fn a_caller_may_speak_only_for_itself() {
        assert!(PeerCaller::Node(2).check_sender(2).is_ok());
        let denied = PeerCaller::Node(2).check_sender(3).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(PeerCaller::Unverified.check_sender(3).is_ok());
    }
}
