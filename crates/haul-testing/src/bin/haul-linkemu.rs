//! `haul-linkemu`: a user-space WAN link in front of a UDP server (such as `haul serve`), for
//! benchmarks on machines without netem. The same shape applies to both directions.
//!
//! Prints `linkemu: listening on ADDR` once the relay is up, and its counters when it gets
//! SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use haul_testing::linkemu::{DirStats, ETHERNET_UDP_PAYLOAD, LinkEmu, LinkSpec};

/// Relay UDP between a client and one server through an emulated WAN link.
///
/// Point the client at --listen instead of the server. Each direction gets its own bottleneck
/// of --rate with a drop-tail queue of --queue bytes, then --delay (one-way: the round-trip
/// time is twice --delay) ± --jitter, and random --loss. Datagrams over --mtu bytes are dropped.
#[derive(Parser, Debug)]
#[command(name = "haul-linkemu")]
struct Args {
    /// Address to listen on for the client.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The server to relay to.
    #[arg(long)]
    to: SocketAddr,
    /// Bottleneck rate per direction: 1gbit, 100mbit, 500kbit, a plain number of bit/s, or 0
    /// for unlimited.
    #[arg(long, default_value = "0", value_parser = parse_rate)]
    rate: u64,
    /// One-way delay per direction (RTT = 2 × delay): 20ms, 1s, 500us.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    delay: Duration,
    /// Each packet's delay is uniform in delay ± jitter; nonzero jitter can reorder.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    jitter: Duration,
    /// Random loss per direction: 0.1% or 0.001.
    #[arg(long, default_value = "0", value_parser = parse_probability)]
    loss: f64,
    /// Drop-tail queue limit: 8MB, 512KiB, bytes. Default: one RTT at the rate plus 128 KiB.
    #[arg(long, value_parser = parse_size)]
    queue: Option<usize>,
    /// Largest UDP payload passed, in bytes (1472 = 1500-byte Ethernet).
    #[arg(long, default_value_t = ETHERNET_UDP_PAYLOAD)]
    mtu: usize,
    /// Seed for loss and jitter.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also print what crossed each way every this often (100ms, 1s): the rate delivered and
    /// the packets dropped in that interval, to see where a transfer lost its pace.
    #[arg(long, value_parser = parse_duration)]
    report_every: Option<Duration>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let spec = LinkSpec {
        rate_bits_per_s: args.rate,
        delay: args.delay,
        jitter: args.jitter,
        loss: args.loss,
        queue_bytes: args.queue,
        mtu: args.mtu,
        seed: args.seed,
    };
    let link = match LinkEmu::start_on(args.listen, args.to, spec.clone(), spec) {
        Ok(link) => link,
        Err(e) => {
            eprintln!(
                "haul-linkemu: cannot listen on {} for {}: {e}; pick a free --listen port",
                args.listen, args.to
            );
            return ExitCode::FAILURE;
        }
    };
    println!("linkemu: listening on {}", link.addr());
    let _ = std::io::stdout().flush();
    if let Err(e) = wait_for_signal(&link, args.report_every) {
        eprintln!("haul-linkemu: cannot wait for signals: {e}");
        return ExitCode::FAILURE;
    }
    println!("linkemu: {}", link.stats());
    ExitCode::SUCCESS
}

/// Blocks until SIGINT or SIGTERM (tokio's handlers keep this crate free of `unsafe`),
/// printing an interval report every `every` meanwhile.
fn wait_for_signal(link: &LinkEmu, every: Option<Duration>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let report = async {
            let Some(every) = every else {
                return std::future::pending().await;
            };
            let started = tokio::time::Instant::now();
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await;
            let mut last = link.stats();
            loop {
                ticks.tick().await;
                let now = link.stats();
                println!(
                    "linkemu: at {:.2}s up {} down {}",
                    started.elapsed().as_secs_f64(),
                    interval(&last.up, &now.up, every),
                    interval(&last.down, &now.down, every)
                );
                let _ = std::io::stdout().flush();
                last = now;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            () = report => {}
        }
        Ok(())
    })
}

/// One direction's interval report: Mbit/s delivered, then packets dropped by loss and by the
/// full queue.
fn interval(before: &DirStats, after: &DirStats, every: Duration) -> String {
    let bytes = after.bytes - before.bytes;
    format!(
        "{:.0} Mbit/s lost {} queue-dropped {}",
        bytes as f64 * 8.0 / every.as_secs_f64() / 1e6,
        after.dropped_loss - before.dropped_loss,
        after.dropped_queue - before.dropped_queue
    )
}

/// Splits "12.5mbit" into (12.5, "mbit").
fn split_unit(s: &str) -> Result<(f64, String), String> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(end);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number"))?;
    Ok((value, unit.trim().to_ascii_lowercase()))
}

fn parse_rate(s: &str) -> Result<u64, String> {
    let (value, unit) = split_unit(s)?;
    let scale = match unit.as_str() {
        "" | "bit" | "bps" => 1.0,
        "kbit" | "k" => 1e3,
        "mbit" | "m" => 1e6,
        "gbit" | "g" => 1e9,
        _ => {
            return Err(format!(
                "unknown rate unit in {s:?}; use kbit, mbit or gbit"
            ));
        }
    };
    Ok((value * scale).round() as u64)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (value, unit) = split_unit(s)?;
    let secs = match unit.as_str() {
        "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        _ => return Err(format!("unknown time unit in {s:?}; use s, ms or us")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let (value, unit) = split_unit(s)?;
    let p = match unit.as_str() {
        "%" => value / 100.0,
        "" => value,
        _ => return Err(format!("loss {s:?} must be like 0.1% or 0.001")),
    };
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("loss {s:?} is not between 0 and 100%"))
    }
}

fn parse_size(s: &str) -> Result<usize, String> {
    let (value, unit) = split_unit(s)?;
    let scale = match unit.as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "kib" => 1024.0,
        "mb" | "m" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "gb" | "g" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "unknown size unit in {s:?}; use KB, KiB, MB or MiB"
            ));
        }
    };
    Ok((value * scale).round() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse() {
        assert_eq!(parse_rate("1gbit"), Ok(1_000_000_000));
        assert_eq!(parse_rate("100mbit"), Ok(100_000_000));
        assert_eq!(parse_rate("500kbit"), Ok(500_000));
        assert_eq!(parse_rate("2.5Gbit"), Ok(2_500_000_000));
        assert!(parse_rate("1gbyte").is_err());
        assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert!(parse_duration("20").is_err());
        assert_eq!(parse_probability("0.1%"), Ok(0.001));
        assert_eq!(parse_probability("0.25"), Ok(0.25));
        assert!(parse_probability("150%").is_err());
        assert_eq!(parse_size("8MB"), Ok(8_000_000));
        assert_eq!(parse_size("512KiB"), Ok(524_288));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn the_command_line_parses() {
        let args = Args::try_parse_from([
            "haul-linkemu",
            "--to",
            "127.0.0.1:9000",
            "--rate",
            "1gbit",
            "--delay",
            "20ms",
            "--loss",
            "0.1%",
        ])
        .unwrap();
        assert_eq!(args.rate, 1_000_000_000);
        assert_eq!(args.delay, Duration::from_millis(20));
        assert_eq!(args.queue, None);
        assert!(
            Args::try_parse_from(["haul-linkemu"]).is_err(),
            "--to is required"
        );
    }
}
