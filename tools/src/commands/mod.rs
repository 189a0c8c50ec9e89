//! The `strata` subcommands.

pub mod access;
pub mod agg;
pub mod bench;
pub mod cluster;
pub mod consume;
pub mod dev;
pub mod group;
pub mod produce;
pub mod search;
pub mod topic;

/// Where and how a command connects: `--brokers`, and TLS.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// Brokers to bootstrap from (host:port, comma-separated).
    #[arg(
        long,
        global = true,
        env = "STRATA_BROKERS",
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    pub brokers: String,
    /// Connect with TLS, trusting the CA certificate in this PEM file.
    #[arg(long, global = true, env = "STRATA_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Log in as this user (clusters that require a login).
    #[arg(long, global = true, env = "STRATA_USER")]
    pub user: Option<String>,
    /// The user's password (prefer the environment variable to the flag).
    #[arg(long, global = true, env = "STRATA_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

impl Connection {
    /// Connects to the brokers, with the address in the error.
    pub async fn connect(&self) -> anyhow::Result<strata_client::Client> {
        let tls = self
            .tls_ca
            .as_deref()
            .map(strata_client::ClientTls::from_ca_file)
            .transpose()?;
        let credentials = match (&self.user, &self.password) {
            (Some(user), Some(password)) => Some(strata_client::Credentials {
                user: user.clone(),
                password: password.clone(),
            }),
            (Some(_), None) => anyhow::bail!("--user needs a password (STRATA_PASSWORD)"),
            _ => None,
        };
        let config = strata_client::ClientConfig {
            tls,
            credentials,
            ..Default::default()
        };
        match strata_client::Client::connect_with(&self.brokers, config).await {
            Ok(client) => Ok(client),
            Err(e) if e.code() == Some(strata_client::ErrorCode::Unauthenticated) => {
                Err(anyhow::Error::new(e).context(format!(
                    "{} refused the login (--user/--password, STRATA_USER/STRATA_PASSWORD)",
                    self.brokers
                )))
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!(
                "cannot connect to {} (is `strata dev` running?)",
                self.brokers
            ))),
        }
    }
}
