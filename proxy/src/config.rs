//! Where `bftcd`'s flags get their values: the command line, then an environment variable
//! `BFTCD_<FLAG_IN_UPPER_SNAKE>`, then a YAML config file (`--config-file`, keys are the long
//! flag names), then the flag's default.
//!
//! Everything is derived from the clap `Command` the `#[derive]`s build, so a flag added
//! anywhere gets its variable and its config-file key without an edit here:
//! * [`with_env`] walks every subcommand and gives every long flag its variable (shown by
//!   `--help`), and every boolean flag a parser for `true/false/1/0`;
//! * [`parse_from`] reads the config file named by `--config-file`/`BFTCD_CONFIG_FILE`, checks
//!   every key with the flag's own value parser, and turns the values into the flags' defaults,
//!   which clap consults only after the command line and the environment.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

pub const ENV_PREFIX: &str = "BFTCD_";

/// Variables (after the prefix) that mean something else and must never be read as a flag:
/// the tracing filter, the test harness's, the setup script's. `ETCD_BIN` keeps its own
/// lookup in `tools::find` (a file, where `--etcd-bin` also takes a directory).
const RESERVED: &[&str] = &[
    "LOG",
    "ETCD_BIN",
    "BIN",
    "BYZANTINE_BIN",
    "KEEP_TEST_DIRS",
    "SIM_TRACE",
    "ETCD_VERSION",
];
const RESERVED_PREFIXES: &[&str] = &["COMPAT_"];

/// Ceremony commands: every value is typed deliberately, once; a variable or config file meant
/// for the daemon must not slip into a key or a genesis. Global flags (logging) still apply.
const NO_ENV_SUBCOMMANDS: &[&str] = &["keygen", "genesis", "client-certs"];

/// Single flags whose meaning differs from the same name elsewhere: `BFTCD_ETCD_ENDPOINT` set for
/// `serve` (the bank's live etcd) must not become the etcd a replay writes into.
const NO_ENV_FLAGS: &[(&str, &str)] = &[("replay", "etcd-endpoint")];

/// The global flag naming the config file (its own key is refused inside a config file).
const CONFIG_FILE_FLAG: &str = "config-file";

/// `listen-client` -> `BFTCD_LISTEN_CLIENT`.
pub fn env_name(long: &str) -> String {
    env_name_with(ENV_PREFIX, long)
}

fn env_name_with(prefix: &str, long: &str) -> String {
    format!("{prefix}{}", long.replace('-', "_").to_ascii_uppercase())
}

fn is_reserved(prefix: &str, name: &str) -> bool {
    let rest = name.strip_prefix(prefix).unwrap_or(name);
    RESERVED.contains(&rest) || RESERVED_PREFIXES.iter().any(|p| rest.starts_with(p))
}

/// Whether a flag of the subcommand at `path` (empty for the top level's global flags) takes a
/// variable and a config-file key.
fn configurable(path: &[&str], long: &str) -> bool {
    match path.first() {
        None => true,
        Some(first) => {
            !NO_ENV_SUBCOMMANDS.contains(first)
                && !NO_ENV_FLAGS
                    .iter()
                    .any(|(sc, flag)| sc == path.last().unwrap_or(first) && *flag == long)
        }
    }
}

fn is_bool(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
        || arg.get_value_parser().type_id() == clap::value_parser!(bool).type_id()
}

/// Booleans from the command line, a variable or the config file: what etcd's flags and
/// container environments write.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err("expected true, false, 1 or 0".into()),
    }
}

fn decorate(cmd: Command, prefix: &str, path: &mut Vec<String>) -> Command {
    let here: Vec<&str> = path.iter().map(String::as_str).collect();
    let cmd = cmd.mut_args(|arg| {
        let arg = if is_bool(&arg) {
            arg.value_parser(parse_bool)
        } else {
            arg
        };
        let Some(long) = arg.get_long().map(str::to_string) else {
            return arg;
        };
        if arg.get_env().is_some() || !configurable(&here, &long) {
            return arg;
        }
        let name = env_name_with(prefix, &long);
        if is_reserved(prefix, &name) {
            return arg;
        }
        arg.env(name)
    });
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    names.into_iter().fold(cmd, |cmd, name| {
        cmd.mut_subcommand(name.clone(), |sub| {
            path.push(name);
            let sub = decorate(sub, prefix, path);
            path.pop();
            sub
        })
    })
}

/// `cmd` with a variable for every configurable long flag (one already given its own keeps it).
pub fn with_env(cmd: Command) -> Command {
    decorate(cmd, ENV_PREFIX, &mut Vec::new())
}

/// The variables that set flags of subcommand `name` (its own flags, not the global ones):
/// what a parent process clears so that a child it configures by flags sees none of them.
pub fn env_names_of<T: CommandFactory>(name: &str) -> Vec<String> {
    let cmd = with_env(T::command());
    cmd.find_subcommand(name)
        .map(|sc| {
            sc.get_arguments()
                .filter_map(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// One config file: keys in file order, each with its values as the flag would take them.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub entries: Vec<(String, Vec<String>)>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("config file {}: {e}", path.display()))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, String> {
        let fail = |what: String| format!("config file {}: {what}", path.display());
        let doc: serde_norway::Value =
            serde_norway::from_str(text).map_err(|e| fail(e.to_string()))?;
        let map = match doc {
            serde_norway::Value::Null => serde_norway::Mapping::new(),
            serde_norway::Value::Mapping(m) => m,
            _ => {
                return Err(fail(
                    "expected a mapping of flag names to values (`data-dir: /var/lib/bftcd`)"
                        .into(),
                ))
            }
        };
        let mut entries = Vec::new();
        for (k, v) in map {
            let serde_norway::Value::String(key) = k else {
                return Err(fail(format!(
                    "key {} is not a flag name",
                    scalar(&k).unwrap_or_else(|| "?".into())
                )));
            };
            let values = match v {
                serde_norway::Value::Sequence(items) => items
                    .iter()
                    .map(|item| {
                        scalar(item).ok_or_else(|| {
                            fail(format!("key `{key}`: list items must be plain values"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                serde_norway::Value::Null => return Err(fail(format!("key `{key}` has no value"))),
                other => vec![scalar(&other).ok_or_else(|| {
                    fail(format!("key `{key}`: expected a value or a list of values"))
                })?],
            };
            entries.push((key, values));
        }
        Ok(ConfigFile {
            path: path.to_path_buf(),
            entries,
        })
    }
}

fn scalar(v: &serde_norway::Value) -> Option<String> {
    match v {
        serde_norway::Value::Bool(b) => Some(b.to_string()),
        serde_norway::Value::Number(n) => Some(n.to_string()),
        serde_norway::Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// What went wrong before the flags were known.
#[derive(Debug)]
pub enum ParseError {
    /// clap's own (usage, `--help`, `--version`): `exit()` prints it as clap does.
    Clap(clap::Error),
    /// The config file: unreadable, not YAML, an unknown key, a bad value.
    Config(String),
}

/// The parsed flags, and what the config file left out (to log once logging is up).
pub struct Parsed<T> {
    pub value: T,
    pub config_file: Option<PathBuf>,
    pub notes: Vec<String>,
}

/// Parses `argv` (with the program name first) with the environment and config file.
pub fn parse_from<T: CommandFactory + FromArgMatches>(
    argv: Vec<OsString>,
) -> Result<Parsed<T>, ParseError> {
    parse_with_prefix(argv, ENV_PREFIX)
}

fn parse_with_prefix<T: CommandFactory + FromArgMatches>(
    argv: Vec<OsString>,
    prefix: &str,
) -> Result<Parsed<T>, ParseError> {
    let mut cmd = decorate(T::command(), prefix, &mut Vec::new());
    let mut notes = Vec::new();
    // A first, forgiving pass finds the subcommand and the config file (flag or variable);
    // if even it fails (--help, --version), the real pass below says so as clap does.
    let probe = cmd
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(argv.clone())
        .ok();
    let mut config_file = None;
    let mut used = Vec::new();
    let mut path = Vec::new();
    if let Some(probe) = probe {
        let mut leaf: &ArgMatches = &probe;
        while let Some((name, sub)) = leaf.subcommand() {
            path.push(name.to_string());
            leaf = sub;
        }
        let file = leaf
            .try_get_one::<PathBuf>(&id_of(&cmd, CONFIG_FILE_FLAG))
            .ok()
            .flatten()
            .cloned();
        if let Some(file) = file {
            let config = ConfigFile::load(&file).map_err(ParseError::Config)?;
            (cmd, used) = apply(cmd, &path, &config, &mut notes).map_err(ParseError::Config)?;
            config_file = Some(file);
        }
    }
    let mut matches = cmd
        .try_get_matches_from_mut(argv.clone())
        .map_err(ParseError::Clap)?;
    if let Some(file) = &config_file {
        check_rules::<T>(prefix, argv, &matches, &path, &used)
            .map_err(|e| ParseError::Config(format!("config file {}: {e}", file.display())))?;
    }
    let value =
        T::from_arg_matches_mut(&mut matches).map_err(|e| ParseError::Clap(e.format(&mut cmd)))?;
    Ok(Parsed {
        value,
        config_file,
        notes,
    })
}

/// A flag the config file set, as the command line would give it.
struct FromFile {
    id: String,
    /// How many subcommands deep its flag is (0: a global flag).
    depth: usize,
    tokens: Vec<String>,
}

/// clap checks rules between flags (`requires`, `conflicts_with`) only for flags given on the
/// command line or in variables, not for defaults: so the values the config file supplied are
/// also tried as flags after the real ones, and a broken rule is reported as the file's.
fn check_rules<T: CommandFactory>(
    prefix: &str,
    mut argv: Vec<OsString>,
    matches: &ArgMatches,
    path: &[String],
    used: &[FromFile],
) -> Result<(), String> {
    // After `--` the tokens would be positional values: nothing to check there.
    if argv.iter().any(|a| a == "--") {
        return Ok(());
    }
    let at = |depth: usize| {
        path[..depth]
            .iter()
            .try_fold(matches, |m, name| m.subcommand_matches(name))
    };
    let from_file: Vec<&FromFile> = used
        .iter()
        .filter(|u| {
            at(u.depth).and_then(|m| m.value_source(&u.id))
                == Some(clap::parser::ValueSource::DefaultValue)
        })
        .collect();
    if from_file.iter().all(|u| u.tokens.is_empty()) {
        return Ok(());
    }
    // A subcommand's flags go right after its name (a parent's flag is unknown to its child);
    // global flags at the end. A misplaced token only makes an error of another kind, ignored.
    let mut after = vec![argv.len(); path.len() + 1];
    let mut from = 1;
    for (k, name) in path.iter().enumerate() {
        if let Some(i) = argv.iter().skip(from).position(|a| a == name.as_str()) {
            after[k + 1] = from + i + 1;
            from += i + 1;
        }
    }
    let after = &after;
    let mut inserts: Vec<(usize, &String)> = from_file
        .iter()
        .flat_map(|u| {
            u.tokens
                .iter()
                .map(move |t| (after[u.depth.min(path.len())], t))
        })
        .collect();
    inserts.sort_by_key(|(k, _)| std::cmp::Reverse(*k));
    for (k, t) in inserts {
        argv.insert(k, OsString::from(t));
    }
    match decorate(T::command(), prefix, &mut Vec::new()).try_get_matches_from(argv) {
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::ArgumentConflict
                    | clap::error::ErrorKind::MissingRequiredArgument
            ) =>
        {
            Err(clap_message(&e))
        }
        _ => Ok(()),
    }
}

/// The id of the top level's flag `--long` (ids are the field names, which clap owns).
fn id_of(cmd: &Command, long: &str) -> String {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(long))
        .map(|a| a.get_id().to_string())
        .unwrap_or_default()
}

fn sub_at<'a>(cmd: &'a Command, path: &[String]) -> Option<&'a Command> {
    path.iter().try_fold(cmd, |c, name| c.find_subcommand(name))
}

fn all_longs(cmd: &Command, out: &mut BTreeSet<String>) {
    out.extend(
        cmd.get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string)),
    );
    for sc in cmd.get_subcommands() {
        all_longs(sc, out);
    }
}

/// The config file's values as defaults of the flags of the subcommand at `path` and of the
/// global flags. Every value is checked first with the flag's own parser, so a bad one is
/// reported with the flag's own words, whether or not the command line overrides it.
fn apply(
    mut cmd: Command,
    path: &[String],
    config: &ConfigFile,
    notes: &mut Vec<String>,
) -> Result<(Command, Vec<FromFile>), String> {
    let mut used = Vec::new();
    let file = config.path.display().to_string();
    let here: Vec<&str> = path.iter().map(String::as_str).collect();
    let mut everywhere = BTreeSet::new();
    all_longs(&cmd, &mut everywhere);
    // The subcommands on the path, innermost first: `govern approve` also takes `govern`'s flags.
    let levels: Vec<(usize, Command)> = (1..=path.len())
        .rev()
        .filter_map(|k| sub_at(&cmd, &path[..k]).map(|c| (k, c.clone())))
        .collect();
    let mut seen = BTreeSet::new();
    for (key, values) in &config.entries {
        if !seen.insert(key.as_str()) {
            return Err(format!("config file {file}: key `{key}` appears twice"));
        }
        if key == CONFIG_FILE_FLAG {
            return Err(format!(
                "config file {file}: `{CONFIG_FILE_FLAG}` cannot be set in a config file"
            ));
        }
        let global = cmd
            .get_arguments()
            .find(|a| a.is_global_set() && a.get_long() == Some(key));
        let own = levels.iter().find_map(|(k, c)| {
            let a = c.get_arguments().find(|a| a.get_long() == Some(key))?;
            Some((*k, c, a))
        });
        let (arg, owner, depth): (&Arg, &Command, usize) = match (global, own) {
            (Some(a), _) => (a, &cmd, 0),
            (None, Some((k, c, a))) if configurable(&here[..k], key) => (a, c, k),
            (None, _) if everywhere.contains(key) => {
                notes.push(format!(
                    "config file {file}: `{key}` is not a setting of `bftcd {}`; ignored",
                    path.join(" ")
                ));
                continue;
            }
            (None, _) => {
                let hint = closest(key, &everywhere)
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default();
                return Err(format!("config file {file}: unknown key `{key}`{hint}"));
            }
        };
        let defaults = check_values(owner, arg, key, values)
            .map_err(|e| format!("config file {file}: {e}"))?;
        let tokens = match arg.get_action() {
            ArgAction::SetTrue if defaults == ["true"] => vec![format!("--{key}")],
            ArgAction::SetFalse if defaults == ["false"] => vec![format!("--{key}")],
            ArgAction::SetTrue | ArgAction::SetFalse => Vec::new(),
            _ => defaults.iter().map(|v| format!("--{key}={v}")).collect(),
        };
        used.push(FromFile {
            id: arg.get_id().to_string(),
            depth,
            tokens,
        });
        let set = move |a: Arg| a.default_values(defaults.clone()).required(false);
        let id = arg.get_id().clone();
        cmd = mut_at(cmd, &path[..depth], move |c| c.mut_arg(id, set));
    }
    Ok((cmd, used))
}

fn mut_at(cmd: Command, path: &[String], f: impl FnOnce(Command) -> Command) -> Command {
    match path.split_first() {
        None => f(cmd),
        Some((first, rest)) => cmd.mut_subcommand(first, |sc| mut_at(sc, rest, f)),
    }
}

/// The values for one flag, checked as the flag checks them (clap keeps its parsers to itself,
/// so each value goes through the flag alone on a command line of its own); booleans come back
/// as `true`/`false`, which every boolean flag's default takes.
fn check_values(
    cmd: &Command,
    arg: &Arg,
    key: &str,
    values: &[String],
) -> Result<Vec<String>, String> {
    let many = matches!(arg.get_action(), ArgAction::Append)
        || arg.get_num_args().is_some_and(|n| n.max_values() > 1);
    if values.len() != 1 && !many {
        return Err(format!("key `{key}`: --{key} takes one value, not a list"));
    }
    // Alone: other flags' rules (requires, conflicts) do not apply to a single value's check.
    let reset = || clap::builder::Resettable::<clap::Id>::Reset;
    let mut alone = arg
        .clone()
        .env(None)
        .required(false)
        .requires(reset())
        .conflicts_with(reset())
        .overrides_with(reset())
        .global(false);
    alone = alone.required_unless_present(reset()).group(reset());
    if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        alone = alone.action(ArgAction::Set);
    }
    let check = Command::new(cmd.get_name().to_string())
        .no_binary_name(true)
        .disable_help_flag(true)
        .arg(alone);
    let mut out = Vec::new();
    for v in values {
        if let Err(e) = check.clone().try_get_matches_from([format!("--{key}={v}")]) {
            return Err(format!("key `{key}`: {}", clap_message(&e)));
        }
        out.push(if is_bool(arg) {
            parse_bool(v)
                .map(|b| b.to_string())
                .unwrap_or_else(|_| v.clone())
        } else {
            v.clone()
        });
    }
    Ok(out)
}

/// clap's error without its `error: ` and its usage lines: the part that names the flag.
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let text = text.trim().strip_prefix("error: ").unwrap_or(text.trim());
    text.split("\n\n").next().unwrap_or(text).trim().to_string()
}

/// The known flag nearest to a mistyped key, if one is near enough to be a typo.
fn closest<'a>(key: &str, known: &'a BTreeSet<String>) -> Option<&'a str> {
    let hyphens = key.replace('_', "-").to_ascii_lowercase();
    if let Some(k) = known.get(&hyphens) {
        return Some(k);
    }
    known
        .iter()
        .map(|k| (edit_distance(&hyphens, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cli;

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("bftcd")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn serve(prefix: &str, args: &[&str]) -> Result<crate::serve::ServeArgs, ParseError> {
        let parsed = parse_with_prefix::<Cli>(argv(args), prefix)?;
        match parsed.value.command {
            crate::Command::Serve(a) => Ok(a),
            _ => panic!("not serve"),
        }
    }

    fn config_error(r: Result<crate::serve::ServeArgs, ParseError>) -> String {
        match r {
            Err(ParseError::Config(m)) => m,
            Err(ParseError::Clap(e)) => panic!("clap error instead of a config error: {e}"),
            Ok(a) => panic!("parsed: {a:?}"),
        }
    }

    fn write(dir: &tempfile::TempDir, text: &str) -> String {
        let p = dir.path().join("bftcd.yaml");
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    #[test]
    fn flag_names_map_to_upper_snake_variables() {
        assert_eq!(env_name("listen-client"), "BFTCD_LISTEN_CLIENT");
        assert_eq!(env_name("data-dir"), "BFTCD_DATA_DIR");
        assert_eq!(
            env_name("client-max-buffered-bytes-total"),
            "BFTCD_CLIENT_MAX_BUFFERED_BYTES_TOTAL"
        );
    }

    #[test]
    fn every_serve_and_dev_cluster_flag_has_its_variable_in_help() {
        let mut cmd = with_env(Cli::command());
        cmd.build();
        for name in ["serve", "dev-cluster"] {
            let sc = cmd.find_subcommand_mut(name).unwrap();
            let help = sc.render_long_help().to_string();
            for arg in sc
                .get_arguments()
                .filter(|a| a.get_long().is_some_and(|l| l != "help"))
            {
                let long = arg.get_long().unwrap();
                let want = env_name(long);
                if long == "etcd-bin" {
                    assert!(
                        arg.get_env().is_none(),
                        "BFTCD_ETCD_BIN keeps its own lookup"
                    );
                    continue;
                }
                assert_eq!(
                    arg.get_env().map(|e| e.to_string_lossy().into_owned()),
                    Some(want.clone()),
                    "{name} --{long}"
                );
                assert!(
                    help.contains(&format!("env: {want}")),
                    "{name} --help does not show {want}:\n{help}"
                );
            }
        }
        // Global flags reach every subcommand, ceremony commands included.
        let keygen = cmd.find_subcommand("keygen").unwrap();
        assert!(keygen
            .get_arguments()
            .any(|a| a.get_long() == Some("log-level") && a.get_env().is_some()));
        assert!(keygen
            .get_arguments()
            .filter(|a| a.get_long() == Some("name"))
            .all(|a| a.get_env().is_none()));
        let replay = cmd.find_subcommand("replay").unwrap();
        assert!(replay
            .get_arguments()
            .filter(|a| a.get_long() == Some("etcd-endpoint"))
            .all(|a| a.get_env().is_none()));
    }

    #[test]
    fn no_flag_reads_a_variable_that_means_something_else() {
        // Every BFTCD_* the test harness, the scripts and tracing read (tests/src, scripts/).
        let others = [
            "BFTCD_LOG",
            "BFTCD_ETCD_BIN",
            "BFTCD_BIN",
            "BFTCD_BYZANTINE_BIN",
            "BFTCD_KEEP_TEST_DIRS",
            "BFTCD_COMPAT_BOTH_STOCK",
            "BFTCD_COMPAT_SIDECAR_ARGS",
            "BFTCD_COMPAT_CLIENT_TLS",
            "BFTCD_COMPAT_BANK_ETCD_ARGS",
            "BFTCD_SIM_TRACE",
            "BFTCD_ETCD_VERSION",
        ];
        let mut cmd = with_env(Cli::command());
        cmd.build();
        fn walk(c: &Command, out: &mut Vec<String>) {
            out.extend(
                c.get_arguments()
                    .filter_map(|a| a.get_env())
                    .map(|e| e.to_string_lossy().into_owned()),
            );
            c.get_subcommands().for_each(|s| walk(s, out));
        }
        let mut names = Vec::new();
        walk(&cmd, &mut names);
        assert!(names.contains(&"BFTCD_DATA_DIR".to_string()));
        for n in &names {
            assert!(!others.contains(&n.as_str()), "a flag reads {n}");
            assert!(n.starts_with(ENV_PREFIX));
        }
    }

    #[test]
    fn yaml_values_become_flag_values() {
        let p = Path::new("x.yaml");
        let c = ConfigFile::parse(
            p,
            "# comment\nlisten-client: 0.0.0.0:2379\nclient-cert-auth: true\nmax-txn-ops: 256\nwrite-timeout: \"30s\"\nkey-owner: [/a/=bank1, /b/=bank2]\nlisten-metrics-urls: http://127.0.0.1:1,http://127.0.0.1:2\n",
        )
        .unwrap();
        let want: Vec<(String, Vec<String>)> = [
            ("listen-client", vec!["0.0.0.0:2379"]),
            ("client-cert-auth", vec!["true"]),
            ("max-txn-ops", vec!["256"]),
            ("write-timeout", vec!["30s"]),
            ("key-owner", vec!["/a/=bank1", "/b/=bank2"]),
            (
                "listen-metrics-urls",
                vec!["http://127.0.0.1:1,http://127.0.0.1:2"],
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
        assert_eq!(c.entries, want);
        assert!(ConfigFile::parse(p, "").unwrap().entries.is_empty());
        assert!(ConfigFile::parse(p, "# nothing\n")
            .unwrap()
            .entries
            .is_empty());
        for (text, what) in [
            ("data-dir:\n", "has no value"),
            ("- a\n- b\n", "expected a mapping"),
            ("data-dir: {a: 1}\n", "expected a value"),
            ("key-owner: [[a]]\n", "list items"),
            ("data-dir: [unclosed\n", "x.yaml"),
            ("data-dir: a\ndata-dir: b\n", "data-dir"),
        ] {
            let e = ConfigFile::parse(p, text).unwrap_err();
            assert!(
                e.contains(what) && e.starts_with("config file x.yaml"),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn command_line_beats_environment_beats_config_file_beats_default() {
        let prefix = "BFTCDTEST_PRECEDENCE_";
        let dir = tempfile::tempdir().unwrap();
        let file = write(&dir, "name: from-file\ndata-dir: /file\nwrite-timeout: 11s\nread-timeout: 12s\nmax-txn-ops: 300\nlog-level: warn\n");
        // Only this test uses these names: tests run in parallel in one process.
        std::env::set_var(format!("{prefix}WRITE_TIMEOUT"), "21s");
        std::env::set_var(format!("{prefix}READ_TIMEOUT"), "22s");
        let a = serve(
            prefix,
            &["--config-file", &file, "serve", "--read-timeout=32s"],
        )
        .unwrap();
        assert_eq!(a.name, "from-file"); // config file (a required flag)
        assert_eq!(a.data_dir, PathBuf::from("/file"));
        assert_eq!(a.max_txn_ops, Some(300));
        assert_eq!(a.write_timeout, std::time::Duration::from_secs(21)); // environment over file
        assert_eq!(a.read_timeout, std::time::Duration::from_secs(32)); // flag over both
        assert_eq!(a.view_timeout, std::time::Duration::from_secs(1)); // default
        let p = parse_with_prefix::<Cli>(argv(&["serve", "--config-file", &file]), prefix).unwrap();
        assert_eq!(p.value.log.log_level, Some(crate::logging::LogLevel::Warn));
        assert_eq!(p.config_file, Some(PathBuf::from(&file)));
        // The config file itself from the environment.
        std::env::set_var(format!("{prefix}CONFIG_FILE"), &file);
        let a = serve(prefix, &["serve", "--name=flag"]).unwrap();
        assert_eq!(
            (a.name.as_str(), a.data_dir.as_path()),
            ("flag", Path::new("/file"))
        );
        std::env::remove_var(format!("{prefix}CONFIG_FILE"));
        std::env::remove_var(format!("{prefix}WRITE_TIMEOUT"));
        std::env::remove_var(format!("{prefix}READ_TIMEOUT"));
        // Without the file, the required flags are missing again.
        assert!(matches!(
            serve(prefix, &["serve"]),
            Err(ParseError::Clap(_))
        ));
    }

    #[test]
    fn booleans_take_true_false_1_0_from_every_source() {
        let prefix = "BFTCDTEST_BOOLS_";
        for (value, want) in [
            ("true", true),
            ("1", true),
            ("false", false),
            ("0", false),
            ("TRUE", true),
        ] {
            std::env::set_var(format!("{prefix}CLIENT_CERT_AUTH"), value);
            std::env::set_var(
                format!("{prefix}SIGN_ANSWERS"),
                if want { "0" } else { "1" },
            );
            std::env::set_var(format!("{prefix}ACCOUNT_CPU"), value);
            let a = serve(
                prefix,
                &[
                    "serve",
                    "--name=a",
                    "--data-dir=/d",
                    "--listen-metrics-urls=http://127.0.0.1:1",
                ],
            )
            .unwrap();
            assert_eq!(
                (a.client_cert_auth, a.sign_answers, a.account_cpu),
                (want, !want, want),
                "{value}"
            );
        }
        std::env::set_var(format!("{prefix}ACCOUNT_CPU"), "maybe");
        assert!(matches!(
            serve(prefix, &["serve", "--name=a", "--data-dir=/d"]),
            Err(ParseError::Clap(_))
        ));
        for name in ["CLIENT_CERT_AUTH", "SIGN_ANSWERS", "ACCOUNT_CPU"] {
            std::env::remove_var(format!("{prefix}{name}"));
        }
        // The command line keeps its forms.
        let a = serve(
            prefix,
            &[
                "serve",
                "--name=a",
                "--data-dir=/d",
                "--client-cert-auth",
                "--sign-answers=false",
            ],
        )
        .unwrap();
        assert!(a.client_cert_auth && !a.sign_answers && !a.account_cpu);
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            &dir,
            "name: a\ndata-dir: /d\nclient-cert-auth: yes\nsign-answers: false\naccount-cpu: 1\n",
        );
        // YAML 1.2: `yes` is a string, refused as the flag refuses it.
        let e = config_error(serve(prefix, &["--config-file", &file, "serve"]));
        assert!(
            e.contains("`client-cert-auth`") && e.contains("expected true, false, 1 or 0"),
            "{e}"
        );
        let file = write(
            &dir,
            "name: a\ndata-dir: /d\nclient-cert-auth: true\nsign-answers: false\naccount-cpu: 1\nlisten-metrics-urls: http://127.0.0.1:1\n",
        );
        let a = serve(prefix, &["--config-file", &file, "serve"]).unwrap();
        assert!(a.client_cert_auth && !a.sign_answers && a.account_cpu);
    }

    #[test]
    fn unknown_keys_are_refused_by_name_with_the_nearest_flag() {
        let prefix = "BFTCDTEST_UNKNOWN_";
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            &dir,
            "name: a\ndata-dir: /d\nlisten-clinet: 127.0.0.1:2379\n",
        );
        let e = config_error(serve(prefix, &["--config-file", &file, "serve"]));
        assert!(
            e.contains("unknown key `listen-clinet`") && e.contains("did you mean `listen-client`"),
            "{e}"
        );
        assert!(e.contains(&file), "{e}");
        let file = write(&dir, "data_dir: /d\n");
        let e = config_error(serve(prefix, &["--config-file", &file, "serve"]));
        assert!(
            e.contains("unknown key `data_dir`") && e.contains("`data-dir`"),
            "{e}"
        );
        let file = write(&dir, "colour: blue\n");
        let e = config_error(serve(prefix, &["--config-file", &file, "serve"]));
        assert!(
            e.contains("unknown key `colour`") && !e.contains("did you mean"),
            "{e}"
        );
        let file = write(&dir, "config-file: /x\n");
        assert!(
            config_error(serve(prefix, &["--config-file", &file, "serve"]))
                .contains("cannot be set in a config file")
        );
        // A flag of another subcommand is left to it (one file may serve `serve` and `govern`).
        let file = write(&dir, "name: a\ndata-dir: /d\nbanks: 4\n");
        let p = parse_with_prefix::<Cli>(argv(&["--config-file", &file, "serve"]), prefix).unwrap();
        assert_eq!(p.notes.len(), 1, "{:?}", p.notes);
        assert!(p.notes[0].contains("`banks`"));
    }

    #[test]
    fn rules_between_flags_hold_for_the_config_files_values() {
        let prefix = "BFTCDTEST_RULES_";
        let dir = tempfile::tempdir().unwrap();
        let file = write(&dir, "name: a\ndata-dir: /d\naccount-cpu: true\n");
        let e = config_error(serve(prefix, &["--config-file", &file, "serve"]));
        assert!(
            e.contains("--listen-metrics-urls") && e.contains(&file),
            "{e}"
        );
        // Satisfied from the command line, or switched off there: fine.
        let a = serve(
            prefix,
            &[
                "--config-file",
                &file,
                "serve",
                "--listen-metrics-urls=http://127.0.0.1:1",
            ],
        )
        .unwrap();
        assert!(a.account_cpu);
        let file = write(&dir, "name: a\ndata-dir: /d\naccount-cpu: false\n");
        assert!(
            !serve(prefix, &["--config-file", &file, "serve"])
                .unwrap()
                .account_cpu
        );
        // govern approve: --no-key-owners conflicts with --key-owner, wherever each comes from.
        let file = write(&dir, "data-dir: /d\nkey-owner: [/a/=bank1]\n");
        let p = parse_with_prefix::<Cli>(
            argv(&[
                "--config-file",
                &file,
                "govern",
                "approve",
                "--no-key-owners",
            ]),
            prefix,
        );
        match p {
            Err(ParseError::Config(e)) => assert!(
                e.contains("--no-key-owners") || e.contains("--key-owner"),
                "{e}"
            ),
            Err(ParseError::Clap(e)) => panic!("clap error: {e}"),
            Ok(_) => panic!("a conflict between the file and the command line passed"),
        }
        let p =
            parse_with_prefix::<Cli>(argv(&["--config-file", &file, "govern", "approve"]), prefix)
                .unwrap();
        assert!(p.notes.is_empty(), "{:?}", p.notes);
    }

    #[test]
    fn a_bad_value_gets_the_flags_own_error() {
        let prefix = "BFTCDTEST_BADVALUE_";
        let dir = tempfile::tempdir().unwrap();
        for (key, value) in [
            ("write-timeout", "soon"),
            ("max-txn-ops", "-3"),
            ("apply-mode", "fast"),
            ("listen-client", "ftp://x:1"),
        ] {
            let flag = match serve(
                prefix,
                &[
                    "serve",
                    "--name=a",
                    "--data-dir=/d",
                    &format!("--{key}={value}"),
                ],
            ) {
                Err(ParseError::Clap(e)) => clap_message(&e),
                other => panic!("--{key}={value}: {:?}", other.map(|_| ())),
            };
            let file = write(
                &dir,
                &format!("name: a\ndata-dir: /d\n{key}: \"{value}\"\n"),
            );
            // Also when the command line overrides it: the file is wrong either way.
            let e = config_error(serve(
                prefix,
                &["--config-file", &file, "serve", &format!("--{key}=1s")],
            ));
            assert!(e.contains(&flag), "config: {e}\nflag: {flag}");
            assert!(e.contains(&format!("key `{key}`")), "{e}");
        }
        let file = write(&dir, "name: [a, b]\n");
        assert!(
            config_error(serve(prefix, &["--config-file", &file, "serve"]))
                .contains("takes one value")
        );
        let e = config_error(serve(
            prefix,
            &["--config-file", "/nonexistent/bftcd.yaml", "serve"],
        ));
        assert!(e.contains("/nonexistent/bftcd.yaml"), "{e}");
    }

    /// docs/bftcd.example.yaml names every flag of `bftcd serve`: set, or in a comment
    /// `# key: value`; both forms must load.
    #[test]
    fn the_example_config_file_is_complete_and_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/bftcd.example.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(": ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                    }) =>
                {
                    rest
                }
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let mut cmd = with_env(Cli::command());
        cmd.build();
        let serve = cmd.find_subcommand("serve").unwrap();
        let flags: BTreeSet<&str> = serve
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| !["help", "config-file", "byzantine"].contains(l))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        for (what, text) in [
            ("as committed", text.as_str()),
            ("with every commented setting", uncommented.as_str()),
        ] {
            let file = ConfigFile::parse(&path, text).unwrap();
            let keys: BTreeSet<&str> = file.entries.iter().map(|(k, _)| k.as_str()).collect();
            let extra: Vec<_> = keys.difference(&flags).collect();
            assert!(
                extra.is_empty(),
                "docs/bftcd.example.yaml {what}: not flags of serve: {extra:?}"
            );
            if what != "as committed" {
                let missing: Vec<_> = flags.difference(&keys).collect();
                assert!(
                    missing.is_empty(),
                    "docs/bftcd.example.yaml does not mention {missing:?}"
                );
            }
            let f = write(&dir, text);
            let p = parse_with_prefix::<Cli>(
                argv(&["--config-file", &f, "serve"]),
                "BFTCDTEST_EXAMPLE_",
            )
            .unwrap_or_else(|e| panic!("docs/bftcd.example.yaml {what}: {e:?}"));
            assert!(p.notes.is_empty(), "{:?}", p.notes);
        }
    }
}
