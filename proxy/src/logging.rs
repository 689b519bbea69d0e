//! Logging: `--log-level` and `--log-format` (every subcommand takes them), or a full tracing
//! filter in `BFTCD_LOG`, which wins over `--log-level`. Logs go to stderr.

use std::sync::OnceLock;

/// etcd's `--log-level` names (default info).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line: timestamp, level, target, message and the event's fields.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Log level: debug, info, warn or error (default info; a replay shows only its progress
    /// and warnings). BFTCD_LOG, a full tracing filter such as `info,bftcd::front=debug`,
    /// overrides it when set.
    #[arg(long, global = true, value_enum, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,
    /// Log format on stderr: `text` or `json` (one JSON object a line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
}

static CHOSEN: OnceLock<LogArgs> = OnceLock::new();

/// What this process logs with, for child sidecars (`dev-cluster`) to log alike.
pub fn child_args() -> Vec<String> {
    let Some(args) = CHOSEN.get() else {
        return Vec::new();
    };
    let mut out = vec![format!("--log-format={}", args.log_format.as_str())];
    out.extend(
        args.log_level
            .map(|l| format!("--log-level={}", l.as_str())),
    );
    out
}

/// Installs the subscriber. `default_filter` applies when neither `--log-level` nor `BFTCD_LOG`
/// says anything.
pub fn init(args: &LogArgs, default_filter: &str) {
    let _ = CHOSEN.set(args.clone());
    let from_level = || {
        args.log_level
            .map(|l| l.as_str().to_string())
            .unwrap_or_else(|| default_filter.to_string())
    };
    let mut bad_env = None;
    let filter = match std::env::var("BFTCD_LOG") {
        Ok(s) if !s.trim().is_empty() => {
            tracing_subscriber::EnvFilter::try_new(&s).unwrap_or_else(|e| {
                bad_env = Some(e.to_string());
                tracing_subscriber::EnvFilter::new(from_level())
            })
        }
        _ => tracing_subscriber::EnvFilter::new(from_level()),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => {
            builder.json().flatten_event(true).with_ansi(false).init();
            // A panic's message would otherwise be the one line on stderr that is not JSON.
            std::panic::set_hook(Box::new(|info| {
                let location = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let payload = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(target: "bftcd::panic", location, "panic: {payload}");
            }));
        }
    }
    if let Some(e) = bad_env {
        tracing::warn!("BFTCD_LOG is not a valid tracing filter ({e}); using --log-level");
    }
}

/// A fatal error, on stderr in the chosen format.
pub fn fatal(message: &str) {
    match CHOSEN.get().map(|a| a.log_format) {
        Some(LogFormat::Json) => tracing::error!(target: "bftcd", "bftcd: {message}"),
        _ => eprintln!("bftcd: {message}"),
    }
}

/// The format asked for on a command line that failed to parse (its error must still be
/// readable by whatever reads JSON lines).
pub fn json_requested(argv: &[std::ffi::OsString]) -> bool {
    let env = std::env::var("BFTCD_LOG_FORMAT")
        .map(|v| v.eq_ignore_ascii_case("json"))
        .unwrap_or(false);
    let mut flag = None;
    let mut it = argv.iter().map(|a| a.to_string_lossy());
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--log-format=") {
            flag = Some(v.eq_ignore_ascii_case("json"));
        } else if a == "--log-format" {
            flag = it.next().map(|v| v.eq_ignore_ascii_case("json"));
        }
    }
    flag.unwrap_or(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<std::ffi::OsString> {
        args.iter().map(std::ffi::OsString::from).collect()
    }

    #[test]
    fn a_failed_parse_still_knows_json_was_asked_for() {
        assert!(json_requested(&argv(&[
            "bftcd",
            "serve",
            "--log-format",
            "json"
        ])));
        assert!(json_requested(&argv(&[
            "bftcd",
            "--log-format=JSON",
            "serve"
        ])));
        assert!(!json_requested(&argv(&[
            "bftcd",
            "--log-format=json",
            "serve",
            "--log-format=text"
        ])));
        assert!(!json_requested(&argv(&["bftcd", "serve", "--log-format"])));
    }

    #[test]
    fn levels_and_formats_use_etcds_names() {
        let names: Vec<_> = [
            LogLevel::Debug,
            LogLevel::Info,
            LogLevel::Warn,
            LogLevel::Error,
        ]
        .map(LogLevel::as_str)
        .into();
        assert_eq!(names, ["debug", "info", "warn", "error"]);
        for l in [
            LogLevel::Debug,
            LogLevel::Info,
            LogLevel::Warn,
            LogLevel::Error,
        ] {
            assert_eq!(
                <LogLevel as clap::ValueEnum>::from_str(l.as_str(), false),
                Ok(l)
            );
        }
        assert_eq!(
            <LogFormat as clap::ValueEnum>::from_str("json", false),
            Ok(LogFormat::Json)
        );
    }
}
