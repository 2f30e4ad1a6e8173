//! The server under test: a `conclave serve` child process started by the
//! bench (on 127.0.0.1, its data in a temp dir, its accounts seeded straight
//! into its database), or one already running that the user names.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, ensure, Context, Result};
use conclave_client::{DeviceKey, ServerAddr};
use conclave_proto::Password;
use conclave_server::store::{sqlite::SqliteStore, DeviceKey as StoredKey, NewAccount, Store};

/// The password of every bench account. Not a secret: loopback test accounts.
pub const BENCH_PASSWORD: &str = "bench-password-not-secret";

/// How to reach or start the server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The `conclave` binary to start.
    pub conclave: PathBuf,
    /// Pin the server to these CPUs (`taskset -c`).
    pub cpus: Option<String>,
    /// A server already running: its address.
    pub external: Option<String>,
    /// Its certificate fingerprint.
    pub fingerprint: Option<String>,
    /// Its process id, for RSS and CPU figures.
    pub pid: Option<u32>,
    /// Extra `conclave serve` flags.
    pub extra: Vec<String>,
}

/// Process ids of the servers this bench started, for the watchdog.
pub static STARTED: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// One bench account.
pub struct Account {
    /// Its username.
    pub username: String,
    /// Its device key.
    pub device: DeviceKey,
}

/// A running server.
pub struct Target {
    /// Where it listens.
    pub addr: ServerAddr,
    /// Its certificate fingerprint.
    pub fingerprint: String,
    /// Its process id, when known.
    pub pid: Option<u32>,
    /// Added to room names: unique per run on an external server, else empty.
    pub tag: String,
    child: Option<Child>,
    /// Its data directory, when the bench made it.
    _data: Option<tempfile::TempDir>,
}

/// Usernames of the accounts `prefix0`, `prefix1`, …
pub fn username(prefix: &str, i: usize) -> String {
    format!("{prefix}{i}")
}

impl Target {
    /// Starts the server (seeding `accounts` accounts named `prefix{i}`
    /// into its fresh database first), or connects to the external one and
    /// registers them there through the protocol.
    pub async fn start(spec: &ServerSpec, prefix: &str, accounts: usize) -> Result<(Target, Vec<Account>)> {
        // On a server that outlives the run, every run needs names of its own.
        let tag = match &spec.external {
            Some(_) => format!("{:06x}", rand::random::<u32>() & 0xff_ffff),
            None => String::new(),
        };
        let run_prefix = if tag.is_empty() { prefix.to_owned() } else { format!("{prefix}{tag}x") };
        let prefix = run_prefix.as_str();
        let devices: Vec<Account> = (0..accounts)
            .map(|i| Account { username: username(prefix, i), device: DeviceKey::generate() })
            .collect();
        if let Some(addr) = &spec.external {
            check_loopback(&ServerAddr::parse(addr).map_err(|e| anyhow::anyhow!("--server {addr}: {e}"))?)?;
            let fingerprint = spec.fingerprint.clone().context(
                "--server needs --fingerprint (the line `fingerprint SHA256:…` the server printed)",
            )?;
            let target = Target {
                addr: ServerAddr::parse(addr).map_err(|e| anyhow::anyhow!("--server {addr}: {e}"))?,
                fingerprint,
                pid: spec.pid,
                tag,
                child: None,
                _data: None,
            };
            crate::client::register_all(&target, &devices).await?;
            return Ok((target, devices));
        }
        let data = tempfile::Builder::new().prefix("conclave-bench-").tempdir()?;
        seed(data.path(), &devices)?;
        let target = spawn(spec, data)?;
        Ok((target, devices))
    }

    /// Stops the server the bench started.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        proc_status(self.pid?, "VmRSS:")
    }

    /// The server's thread count.
    pub fn threads(&self) -> Option<u64> {
        proc_status(self.pid?, "Threads:")
    }

    /// CPU time the server has used (user + system), in seconds.
    pub fn cpu_secs(&self) -> Option<f64> {
        cpu_secs(self.pid?)
    }
}

/// CPU time process `pid` has used (user + system), in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line, in clock ticks (100 per second on
    // Linux).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Time the hypervisor gave this machine's CPUs to something else while
/// they had work ("steal" in `/proc/stat`), per CPU, in milliseconds; `None`
/// where the kernel does not report it. A latency tail measured while the
/// host took the CPU measures the host, not the server.
pub fn host_steal_ms() -> Option<Vec<u64>> {
    parse_steal(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_steal(stat: &str) -> Option<Vec<u64>> {
    // `cpuN user nice system idle iowait irq softirq steal ...`, in clock
    // ticks (100 per second on Linux).
    let per_cpu: Option<Vec<u64>> = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| l.split_whitespace().nth(8)?.parse::<u64>().ok().map(|ticks| ticks * 10))
        .collect();
    per_cpu.filter(|v| !v.is_empty())
}

/// Steal per CPU between two readings of [`host_steal_ms`].
pub fn steal_between(before: Option<Vec<u64>>, after: Option<Vec<u64>>) -> Option<Vec<u64>> {
    let (before, after) = (before?, after?);
    (before.len() == after.len())
        .then(|| after.iter().zip(&before).map(|(a, b)| a.saturating_sub(*b)).collect())
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

fn proc_status(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Writes the accounts straight into a new server database: one Argon2 hash
/// shared by all (hashing thousands would take minutes and measure nothing
/// the `login` scenario does not).
fn seed(data: &Path, accounts: &[Account]) -> Result<()> {
    let hash = conclave_server::password::hash_now(&Password::new(BENCH_PASSWORD))
        .map_err(|e| anyhow::anyhow!("hashing the bench password: {}", e.message))?;
    let store = SqliteStore::open_with(&data.join("server.db"), false)?;
    let bar = crate::progress(accounts.len() as u64, "seeding accounts");
    for a in accounts {
        let username = conclave_proto::validate_username(&a.username)?;
        let display = conclave_proto::validate_display_name(&a.username)?;
        store.create_account(NewAccount {
            username: &username,
            display_name: &display,
            password_hash: &hash,
            device_key: &StoredKey(a.device.public()),
            invite_token: None,
        })?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

fn spawn(spec: &ServerSpec, data: tempfile::TempDir) -> Result<Target> {
    let log = std::fs::File::create(data.path().join("server.log"))?;
    let mut cmd = match &spec.cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(&spec.conclave);
            c
        }
        None => Command::new(&spec.conclave),
    };
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path().join("server"))
        .args(OPEN_LIMITS)
        .args(&spec.extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    // The server's database goes where the accounts were seeded.
    std::fs::create_dir_all(data.path().join("server"))?;
    std::fs::rename(data.path().join("server.db"), data.path().join("server").join("server.db"))?;
    let mut child = cmd.spawn().with_context(|| format!("cannot start {}", spec.conclave.display()))?;
    let stdout = child.stdout.take().context("no stdout from the server")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut addr = None;
    let mut fingerprint = None;
    for line in lines.by_ref() {
        let line = line?;
        if let Some(a) = line.strip_prefix("listening on ") {
            addr = Some(a.to_owned());
        } else if let Some(f) = line.strip_prefix("fingerprint ") {
            fingerprint = Some(f.to_owned());
            break;
        }
    }
    // Keep draining stdout so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    let (Some(addr), Some(fingerprint)) = (addr, fingerprint) else {
        let _ = child.kill();
        let log = std::fs::read_to_string(data.path().join("server.log")).unwrap_or_default();
        bail!("the server did not start: {}", log.lines().last().unwrap_or("(no output)"));
    };
    let pid = child.id();
    if let Ok(mut started) = STARTED.lock() {
        started.push(pid);
    }
    // Under taskset the child is taskset, which execs the server: same pid.
    Ok(Target {
        addr: ServerAddr::parse(&addr).map_err(|e| anyhow::anyhow!("{e}"))?,
        fingerprint,
        pid: Some(pid),
        tag: String::new(),
        child: Some(child),
        _data: Some(data),
    })
}

/// The server's abuse limits, opened up for load (as the IRC peers' flood
/// limits were, see ../shared/peer/README.md §2).
const OPEN_LIMITS: &[&str] = &[
    "--max-connections",
    "100000",
    "--max-connections-per-address",
    "100000",
    "--max-unauthenticated-per-address",
    "100000",
    "--requests-per-second",
    "100000000",
    "--messages-per-second",
    "100000000",
    "--max-members-per-room",
    "100000",
    "--max-frame-bytes",
    "16777216",
    "--free-login-failures",
    "1000000",
    "--handshake-timeout",
    "60",
    // 65,536 frames (~20 MiB of 300-byte events) per connection before a
    // reader counts as too slow: the peers' send queues were opened to 8–64 MiB.
    "--outbound-queue",
    "65536",
];

/// Checks that an address is a loopback one: the bench never loads anything else.
pub fn check_loopback(addr: &ServerAddr) -> Result<()> {
    let ok = addr.host == "localhost"
        || addr.host.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false);
    ensure!(ok, "--server {addr}: the bench only loads loopback addresses (127.0.0.0/8, ::1, localhost)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_read_per_cpu_in_milliseconds() {
        let stat = "cpu  991583 0 155848 894191 16536 0 18915 4931 0 0\n\
                    cpu0 497333 0 65536 463761 3343 0 10792 2029 0 0\n\
                    cpu1 494249 0 90312 430430 13192 0 8123 2902 0 0\n\
                    intr 1 2 3\nctxt 5\n";
        assert_eq!(parse_steal(stat), Some(vec![20290, 29020]));
        assert_eq!(parse_steal("cpu  1 2 3\ncpu0 1 2 3\n"), None, "a kernel without the steal column");
        assert_eq!(parse_steal("intr 1\n"), None);
        assert_eq!(steal_between(Some(vec![10, 20]), Some(vec![30, 20])), Some(vec![20, 0]));
        assert_eq!(steal_between(Some(vec![10]), Some(vec![30, 20])), None, "a CPU came or went");
        assert_eq!(steal_between(None, Some(vec![30])), None);
    }

    #[test]
    fn this_machine_reports_steal_for_each_cpu() {
        // Linux has had the column since 2.6.11; a bench run must be able to say it.
        let steal = host_steal_ms().expect("/proc/stat has a steal column");
        assert!(!steal.is_empty());
    }
}
