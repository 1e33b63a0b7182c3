//! Which server the CLI talks to: the control socket of the configuration's data directory by
//! default, or a remote server with a token; the calls themselves are [`tenement_api::Client`]'s.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use tenement_api::Target;

pub struct Client {
    api: tenement_api::Client,
}

/// Path of the control socket in a data directory.
pub fn control_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("ten.sock")
}

impl Client {
    /// The local data directory when no server answers on its control socket (so the
    /// caller may work on the files directly); `None` for a remote server or a live one.
    pub fn offline_data_dir(&self) -> Option<PathBuf> {
        match self.api.target() {
            Target::Socket(sock) => match std::os::unix::net::UnixStream::connect(sock) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    sock.parent().map(Path::to_path_buf)
                }
                _ => None,
            },
            Target::Tcp { .. } => None,
        }
    }

    pub fn resolve(
        config: Option<&Path>,
        data_dir: Option<PathBuf>,
        server: Option<String>,
        token: Option<String>,
    ) -> anyhow::Result<Self> {
        if let Some(url) = server.filter(|s| !s.is_empty()) {
            let authority = url
                .strip_prefix("http://")
                .ok_or_else(|| anyhow!("--server must be an http:// URL, got {url:?}"))?
                .trim_end_matches('/')
                .to_owned();
            let target = Target::Tcp { authority, token };
            return Ok(Self {
                api: tenement_api::Client::new(target),
            });
        }
        // No configuration anywhere: the default data_dir. A configuration that exists but
        // does not load is reported, not guessed around (its data_dir may be elsewhere).
        let data_dir = match data_dir {
            Some(d) => d,
            None => match crate::config_file::find(config) {
                Ok(_) => {
                    crate::config_file::load_for_client(config)?
                        .settings
                        .data_dir
                }
                Err(_) => PathBuf::from("/var/lib/tenement"),
            },
        };
        Ok(Self {
            api: tenement_api::Client::new(Target::Socket(control_socket(&data_dir))),
        })
    }
}

impl std::ops::Deref for Client {
    type Target = tenement_api::Client;
    fn deref(&self) -> &tenement_api::Client {
        &self.api
    }
}
