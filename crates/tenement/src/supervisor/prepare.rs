//! An instance's argv, environment and paths, from its service and the settings.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use tenement_core::InstanceKey;
use tenement_core::config::{Isolation, Service, Vars};
use tenement_runtime::{Spec, argv_for};

use super::{MAX_SOCKET_PATH, Supervisor, TMP_SIZE_MB, instance_dir};
use crate::Error;

impl Supervisor {
    /// Builds the argv, environment and paths of one instance.
    pub(super) fn prepare(
        &self,
        key: &InstanceKey,
        service: &Service,
        port: u16,
        user: Option<tenement_runtime::User>,
    ) -> Result<(Spec, PathBuf, PathBuf), Error> {
        let config = self.config();
        let settings = &config.settings;
        let data_root = settings.data_dir.to_string_lossy();
        let invalid = |message: String| Error::Invalid {
            key: key.clone(),
            message,
        };
        let mut vars = Vars {
            name: key.service.as_str(),
            id: key.id.as_str(),
            data_dir: &data_root,
            socket: "",
            port,
        };
        let socket = service.socket.render(&vars);
        if socket.len() > MAX_SOCKET_PATH {
            return Err(invalid(format!(
                "socket path {socket} is longer than {MAX_SOCKET_PATH} bytes"
            )));
        }
        vars.socket = &socket;
        let data = instance_dir(&settings.data_dir, key);
        if let Some(service_dir) = data.parent() {
            // Only a `process` app of a user of its own reaches its directory through the
            // host's tree (0711: traversable, not listable). Namespaced and sandboxed apps get
            // theirs bound in, so nobody else on the host gets that far (0700): what a tenant
            // leaves in its directory (a setuid program of `user = "root"`) is no way in.
            let mode = match service.isolation == Isolation::Process && user.is_some() {
                true => 0o711,
                false => 0o700,
            };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(service_dir)
                .and_then(|()| {
                    std::fs::set_permissions(
                        service_dir,
                        std::os::unix::fs::PermissionsExt::from_mode(mode),
                    )
                })
                .map_err(|e| invalid(format!("cannot create {}: {e}", service_dir.display())))?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&data) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && data.is_dir() => {}
            Err(e) => return Err(invalid(format!("cannot create {}: {e}", data.display()))),
        }

        let args: Vec<String> = service.args.iter().map(|a| a.render(&vars)).collect();
        let argv = argv_for(&service.command.render(&vars), &args);
        let mut env: Vec<(String, String)> = vec![
            (
                "PATH".into(),
                std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
            ),
            ("HOME".into(), data.to_string_lossy().into_owned()),
        ];
        for (k, v) in &service.env {
            env.retain(|(name, _)| name != k);
            env.push((k.clone(), v.render(&vars)));
        }
        const OURS: [&str; 4] = ["PORT", "SOCKET_PATH", "INSTANCE_ID", "SERVICE_NAME"];
        env.retain(|(name, _)| !OURS.contains(&name.as_str()));
        env.extend([
            ("PORT".into(), port.to_string()),
            ("SOCKET_PATH".into(), socket.clone()),
            ("INSTANCE_ID".into(), key.id.to_string()),
            ("SERVICE_NAME".into(), key.service.to_string()),
        ]);
        let spec = Spec {
            key: key.clone(),
            argv,
            env,
            workdir: service.workdir.clone(),
            data_root: settings.data_dir.clone(),
            instance_dir: data.clone(),
            socket: PathBuf::from(&socket),
            cgroups: Vec::new(),
            user,
            tmp_size_mb: service.storage_quota_mb.unwrap_or(TMP_SIZE_MB),
            handover: Default::default(),
            memory_limit_mb: service.memory_limit_mb,
            request_cpu_ms: service.request_cpu_ms.unwrap_or(Service::REQUEST_CPU_MS),
            outbound: service.outbound,
        };
        Ok((spec, PathBuf::from(socket), data))
    }
}
