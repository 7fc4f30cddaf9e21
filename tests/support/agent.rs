//! The real `qscale` binary, run as a user would run it, against the fake API server or (see
//! [`Agent::start_in`]) the Kubernetes API of a [`Cluster`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::cluster::Cluster;
use super::fake_kube::FakeKube;

/// The namespace the agent works in against a bare [`FakeKube`] (and a fake [`Cluster`]).
pub const NAMESPACE: &str = "work";

pub struct Agent {
    child: Option<Child>,
    pub dir: TempDir,
    pub log_path: PathBuf,
    /// Port of the admin server (/metrics, /healthz, /readyz) on 127.0.0.1.
    pub admin_port: u16,
}

/// Environment for the agent: static test credentials and no instance metadata, so nothing
/// ever leaves 127.0.0.1.
fn aws_env(cmd: &mut Command) {
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", super::moto::REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ROLE_ARN")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
}

impl Agent {
    /// Writes `rules` (TOML) and a kubeconfig for `kube` (namespace [`NAMESPACE`]), and starts
    /// `qscale run`.
    pub fn start(rules: &str, kube: &FakeKube, extra_args: &[&str]) -> Agent {
        Self::start_rules(
            rules,
            |dir| kube.write_kubeconfig(dir, NAMESPACE),
            extra_args,
            None,
        )
    }

    /// [`Agent::start`] against a [`Cluster`], in the cluster's namespace.
    pub fn start_in(rules: &str, cluster: &Cluster, extra_args: &[&str]) -> Agent {
        let kubeconfig = |dir: &Path| cluster.write_kubeconfig(dir, cluster.namespace());
        Self::start_rules(rules, kubeconfig, extra_args, None)
    }

    /// [`Agent::start_in`] with `HTTP_PROXY` set to `proxy` and no `NO_PROXY`, as a pod behind an
    /// egress proxy runs. The API server is unaffected: kube reads only `HTTPS_PROXY`.
    pub fn start_in_behind_proxy(rules: &str, cluster: &Cluster, proxy: &str) -> Agent {
        let kubeconfig = |dir: &Path| cluster.write_kubeconfig(dir, cluster.namespace());
        Self::start_rules(rules, kubeconfig, &[], Some(proxy))
    }

    fn start_rules(
        rules: &str,
        kubeconfig: impl FnOnce(&Path) -> PathBuf,
        extra_args: &[&str],
        proxy: Option<&str>,
    ) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules_path = dir.path().join("rules.toml");
        std::fs::write(&rules_path, rules).expect("write rules");
        let kubeconfig = kubeconfig(dir.path());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_qscale"));
        cmd.arg("run").arg("--config").arg(&rules_path);
        Self::spawn(cmd, dir, &kubeconfig, extra_args, proxy)
    }

    pub fn start_with(dir: TempDir, rules: &Path, kubeconfig: &Path, extra: &[&str]) -> Agent {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_qscale"));
        cmd.arg("run").arg("--config").arg(rules);
        Self::spawn(cmd, dir, kubeconfig, extra, None)
    }

    /// Starts `qscale run` with the rules in a ConfigMap (`--config-map NAME/KEY`).
    pub fn start_config_map(kube: &FakeKube, config_map: &str, extra: &[&str]) -> Agent {
        Self::start_from_config_map(
            |dir| kube.write_kubeconfig(dir, NAMESPACE),
            config_map,
            extra,
        )
    }

    /// [`Agent::start_config_map`] against a [`Cluster`], in the cluster's namespace.
    pub fn start_config_map_in(cluster: &Cluster, config_map: &str, extra: &[&str]) -> Agent {
        let kubeconfig = |dir: &Path| cluster.write_kubeconfig(dir, cluster.namespace());
        Self::start_from_config_map(kubeconfig, config_map, extra)
    }

    fn start_from_config_map(
        kubeconfig: impl FnOnce(&Path) -> PathBuf,
        config_map: &str,
        extra: &[&str],
    ) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = kubeconfig(dir.path());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_qscale"));
        cmd.arg("run").arg("--config-map").arg(config_map);
        Self::spawn(cmd, dir, &kubeconfig, extra, None)
    }

    /// Runs `cmd` with the test environment; `proxy`, if any, as its only HTTP proxy.
    fn spawn(
        mut cmd: Command,
        dir: TempDir,
        kubeconfig: &Path,
        extra: &[&str],
        proxy: Option<&str>,
    ) -> Agent {
        let log_path = dir.path().join("agent.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let admin_port = super::moto::free_port();
        cmd.arg("--metrics-addr")
            .arg(format!("127.0.0.1:{admin_port}"))
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "qscale=debug,info")
            .env_remove("QSCALE_CONFIG")
            .env_remove("QSCALE_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        aws_env(&mut cmd);
        // Tests reach only 127.0.0.1: a proxy of the outer environment must not carry the
        // agent's calls anywhere else (kube reads HTTPS_PROXY, the SQS client all of them; a
        // real cluster behind a proxy takes `proxy-url` in its kubeconfig).
        for name in [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            cmd.env_remove(name);
        }
        if let Some(proxy) = proxy {
            cmd.env("HTTP_PROXY", proxy)
                .env_remove("NO_PROXY")
                .env_remove("no_proxy");
        }
        let child = cmd.spawn().expect("spawn qscale");
        Agent {
            child: Some(child),
            dir,
            log_path,
            admin_port,
        }
    }

    /// GET on the admin server: (status, body), or None if it does not answer.
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin_port, path)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `qscale` with arguments to completion: (exit code, stdout, stderr).
pub fn qscale(args: &[&str], kubeconfig: Option<&Path>) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qscale"));
    cmd.args(args).env_remove("QSCALE_CONFIG");
    if let Some(path) = kubeconfig {
        cmd.env("KUBECONFIG", path);
    }
    aws_env(&mut cmd);
    let out = cmd.output().expect("run qscale");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A minimal HTTP/1.0 GET on 127.0.0.1, enough for /metrics and the probes.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((status, body))
}
