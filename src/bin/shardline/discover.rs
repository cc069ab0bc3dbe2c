//! `shardline discover`, and `--rpc auto` for the commands that take `--rpc`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::Context as _;
use shardline::discover::{self, announce, ListenOptions, ProbeOptions, Probed, State};

/// `shardline discover`'s options.
#[derive(Debug, clap::Args)]
pub struct DiscoverArgs {
    /// Hosts, HOST:PORT, or CIDR ranges (e.g. 10.0.0.0/24; at most a /16),
    /// comma or space separated. Without any, listens for workers started
    /// with --announce, then probes those.
    pub targets: Vec<String>,
    /// Port probed on targets that give none.
    #[arg(long, default_value_t = discover::DEFAULT_PORT)]
    pub port: u16,
    /// One JSON array of every server probed, instead of the table.
    #[arg(long)]
    pub json: bool,
    /// List the unreachable addresses of a range too.
    #[arg(long)]
    pub all: bool,
    /// How long to listen for announcements (without targets), e.g. 2s.
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = shardline::server::parse_duration)]
    pub listen: Duration,
    /// Time to open a connection before a server counts as unreachable.
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = shardline::server::parse_duration)]
    pub connect_timeout: Duration,
    /// Time for HELLO and each later answer; a server that accepts but does
    /// not answer HELLO in time counts as busy.
    #[arg(long, default_value = "1500ms", value_name = "DURATION", value_parser = shardline::server::parse_duration)]
    pub answer_timeout: Duration,
    /// Probes at once.
    #[arg(long, default_value_t = 256)]
    pub parallel: usize,
    #[command(flatten)]
    pub beacon: BeaconArgs,
}

/// Where announcements are heard.
#[derive(Debug, clap::Args)]
pub struct BeaconArgs {
    /// UDP port of the announce beacon (group 239.255.77.52).
    #[arg(long, env = "SHARDLINE_ANNOUNCE_PORT", default_value_t = announce::PORT)]
    pub announce_port: u16,
    /// Interfaces, by one of their IPv4 addresses, to listen for
    /// announcements on, comma separated [default: the default route's
    /// and loopback].
    #[arg(long, env = "SHARDLINE_ANNOUNCE_INTERFACE", value_delimiter = ',')]
    pub interface: Vec<Ipv4Addr>,
}

impl BeaconArgs {
    fn listen_options(&self, duration: Duration) -> ListenOptions {
        let mut o = ListenOptions {
            group: SocketAddrV4::new(announce::GROUP, self.announce_port),
            duration,
            ..ListenOptions::default()
        };
        if !self.interface.is_empty() {
            o.interfaces = self.interface.clone();
        }
        o
    }

    /// The same settings from the environment, for `--rpc auto`.
    fn from_env() -> anyhow::Result<BeaconArgs> {
        let announce_port = match std::env::var("SHARDLINE_ANNOUNCE_PORT") {
            Ok(p) => p
                .trim()
                .parse()
                .with_context(|| format!("SHARDLINE_ANNOUNCE_PORT={p:?} is not a port"))?,
            Err(_) => announce::PORT,
        };
        let interface = match std::env::var("SHARDLINE_ANNOUNCE_INTERFACE") {
            Ok(list) => list
                .split(',')
                .map(|a| {
                    a.trim().parse().with_context(|| {
                        format!("SHARDLINE_ANNOUNCE_INTERFACE: {a:?} is not an IPv4 address")
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            Err(_) => Vec::new(),
        };
        Ok(BeaconArgs {
            announce_port,
            interface,
        })
    }
}

/// `shardline discover`.
pub fn run(a: DiscoverArgs) -> anyhow::Result<()> {
    let endpoints = discover::expand(&a.targets, a.port)?;
    let ranged = a.targets.iter().any(|t| t.contains('/'));
    let opts = ProbeOptions {
        connect_timeout: a.connect_timeout,
        answer_timeout: a.answer_timeout,
        parallel: a.parallel.max(1),
    };
    let rt = tokio::runtime::Runtime::new()?;
    let endpoints = if a.targets.is_empty() {
        let listen = a.beacon.listen_options(a.listen);
        eprintln!(
            "listening {:.1} s for announced workers on {} ...",
            listen.duration.as_secs_f64(),
            listen.group
        );
        let heard = announce::listen(&listen).context("listening for announced workers")?;
        heard.into_iter().map(|h| h.endpoint).collect()
    } else {
        endpoints
    };
    let probed = rt.block_on(discover::probe_many(&endpoints, &opts));
    let shown: Vec<&Probed> = probed
        .iter()
        .filter(|p| a.all || !ranged || p.state != State::Unreachable)
        .collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
    } else {
        print!("{}", table(&shown));
    }
    eprintln!("{}", summary(&probed, a.targets.is_empty()));
    Ok(())
}

fn table(rows: &[&Probed]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<24} {:<13} {:<8} {:>7} {:>21}  {}\n",
        "server", "state", "protocol", "devices", "free / total", "detail"
    );
    for p in rows {
        let (free, total) = p
            .devices
            .iter()
            .fold((0u64, 0u64), |(f, t), d| (f + d.free, t + d.total));
        let mem = if p.devices.is_empty() {
            String::new()
        } else {
            format!(
                "{} / {}",
                shardline::plan::human_bytes(free),
                shardline::plan::human_bytes(total)
            )
        };
        let _ = writeln!(
            out,
            "{:<24} {:<13} {:<8} {:>7} {:>21}  {}",
            p.endpoint,
            p.state.to_string(),
            p.protocol.as_deref().unwrap_or("-"),
            if p.state == State::Ready {
                p.devices.len().to_string()
            } else {
                "-".into()
            },
            mem,
            p.detail.as_deref().unwrap_or("")
        );
    }
    out
}

fn summary(probed: &[Probed], listened: bool) -> String {
    let count = |s: State| probed.iter().filter(|p| p.state == s).count();
    let head = if listened {
        format!("heard {} announced worker(s)", probed.len())
    } else {
        format!("probed {}", probed.len())
    };
    format!(
        "{head}: {} ready, {} busy, {} wrong version, {} unreachable, {} error",
        count(State::Ready),
        count(State::Busy),
        count(State::WrongVersion),
        count(State::Unreachable),
        count(State::Error)
    )
}

/// `--rpc` as given, or, for `--rpc auto`, the ready workers that announce
/// themselves (listening 2 s on the beacon port of SHARDLINE_ANNOUNCE_PORT
/// and the interfaces of SHARDLINE_ANNOUNCE_INTERFACE, as `discover` does).
pub fn resolve_rpc(rpc: &[String]) -> anyhow::Result<Vec<String>> {
    if !rpc.iter().any(|r| r.eq_ignore_ascii_case("auto")) {
        return Ok(rpc.to_vec());
    }
    anyhow::ensure!(
        rpc.len() == 1,
        "--rpc auto stands alone: give either auto or a list of HOST:PORT"
    );
    let listen = BeaconArgs::from_env()?.listen_options(Duration::from_secs(2));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ready = rt
        .block_on(discover::find_ready(&listen, &ProbeOptions::default()))
        .context("--rpc auto")?;
    eprintln!("--rpc auto: using {}", ready.join(","));
    Ok(ready)
}
