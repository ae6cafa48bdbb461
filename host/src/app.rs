//! The `koi` command line: global flags, the command tree (built-ins plus one subcommand per
//! plugin, built from manifests), dispatch of `koi <moniker> <verb>` to the plugin's method (run
//! by [`crate::call`], which relays Ctrl-C as `$/cancel`), deprecated root aliases, and the
//! documented exit codes.

use crate::call::{Target, call_with_interrupt};
use crate::catalog::{self, PluginInfo};
use crate::clispec;
use crate::connection::LaunchOptions;
use crate::discovery::{BUILTINS, Discovery};
use crate::paths::KoiHome;
use crate::render;
use crate::session::Session;
use crate::ui::Terminal;
use clap::{Arg, ArgAction, Command};
use koi_protocol::handshake::RunMode;
use koi_protocol::{DEFAULT_MAX_FRAME_BYTES, ErrorObject, Manifest, codes};
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: the plugin's method reported a failure (or a plugin in `koi status` failed).
pub const EXIT_METHOD_FAILED: u8 = 1;
/// Exit status: the command line was wrong (unknown command, bad argument, invalid params).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: a plugin could not be used (missing, crashed, timed out, broke the protocol or its
/// schemas, incompatible protocol version).
pub const EXIT_PLUGIN_FAILED: u8 = 3;
/// Exit status: interrupted with Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;

const EXIT_CODES_HELP: &str = "Exit codes: 0 success · 1 the command failed · 2 usage error · \
3 a plugin could not be used (missing, crashed, timed out, broke the protocol) · 130 interrupted";

/// Flags that apply to every command.
#[derive(Debug, Clone)]
pub struct Globals {
    /// `--json`.
    pub json: bool,
    /// Colour on stdout.
    pub color: bool,
    /// `-v` count.
    pub verbosity: u8,
    /// `--no-daemon`: run plugins directly even when `koi daemon` answers.
    pub no_daemon: bool,
}

impl Globals {
    fn scan(args: &[String]) -> Self {
        let before_dashdash = args.iter().skip(1).take_while(|a| *a != "--");
        let mut json = false;
        let mut no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let mut verbosity = 0u8;
        let mut no_daemon = false;
        for arg in before_dashdash {
            match arg.as_str() {
                "--json" => json = true,
                "--no-daemon" => no_daemon = true,
                "--no-color" => no_color = true,
                "--verbose" => verbosity = verbosity.saturating_add(1),
                a if a.starts_with('-')
                    && !a.starts_with("--")
                    && a.len() > 1
                    && a[1..].chars().all(|c| c == 'v') =>
                {
                    verbosity = verbosity.saturating_add((a.len() - 1) as u8);
                }
                _ => {}
            }
        }
        let color = !no_color && std::io::stdout().is_terminal();
        Self {
            json,
            color,
            verbosity,
            no_daemon,
        }
    }
}

/// Entry point of the `koi` binary.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let globals = Globals::scan(&args);
    let filter = crate::logging::filter_string(globals.verbosity);
    crate::logging::init(&filter, std::io::stderr().is_terminal() && globals.color);
    // The daemon serves many clients and plugins at once; a one-shot command needs one thread.
    let runtime = if command_word(&args).is_some_and(|(_, w)| w == "daemon") {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("koi: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_PLUGIN_FAILED);
        }
    };
    let code = runtime.block_on(run(args, globals, filter));
    ExitCode::from(code)
}

/// The shared context of one invocation.
struct Invocation {
    args: Vec<String>,
    globals: Globals,
    home: KoiHome,
    session: Arc<Session>,
}

fn max_frame_bytes() -> usize {
    std::env::var("KOI_MAX_FRAME_BYTES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|v| *v >= 1024)
        .unwrap_or(DEFAULT_MAX_FRAME_BYTES as usize)
}

async fn run(args: Vec<String>, globals: Globals, filter: String) -> u8 {
    let home = KoiHome::from_env();
    let discovery = Discovery::from_env(&home);
    let terminal = Arc::new(Terminal::new(globals.json, globals.color));
    let launch = LaunchOptions {
        mode: RunMode::OneShot,
        koi_home: home.root().to_owned(),
        interactive: terminal.interactive(),
        max_frame_bytes: max_frame_bytes(),
        handshake_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        log_filter: filter,
    };
    let session = Session::new(discovery, launch, terminal);
    let inv = Invocation {
        args,
        globals,
        home,
        session,
    };
    let code = route(&inv).await;
    inv.session.shutdown_all().await;
    code
}

/// The first word that is not a flag: the command.
fn command_word(args: &[String]) -> Option<(usize, &str)> {
    args.iter()
        .enumerate()
        .skip(1)
        .take_while(|(_, a)| *a != "--")
        .find(|(_, a)| !a.starts_with('-'))
        .map(|(i, a)| (i, a.as_str()))
}

async fn route(inv: &Invocation) -> u8 {
    let word = command_word(&inv.args).map(|(_, w)| w.to_owned());
    match word.as_deref() {
        Some("daemon")
            if inv
                .args
                .iter()
                .skip(2)
                .all(|a| a.starts_with('-') && a != "-h" && a != "--help") =>
        {
            crate::daemon::run(inv.home.clone(), inv.session.launch.clone()).await
        }
        Some("status")
            if !inv.globals.no_daemon && !inv.args.iter().any(|a| a == "-h" || a == "--help") =>
        {
            match crate::forward::connect(&inv.home, inv.session.terminal.clone()).await {
                Some(daemon) => crate::builtins::status_from_daemon(&daemon, &inv.globals).await,
                None => run_root(inv).await,
            }
        }
        Some(w) if !BUILTINS.contains(&w) && inv.session.discovery.find(w).is_some() => {
            run_plugin_verb(inv, w, inv.args.clone()).await
        }
        _ => run_root(inv).await,
    }
}

/// Commands that need the whole tree: built-ins, help, aliases, unknown words.
async fn run_root(inv: &Invocation) -> u8 {
    // Completions must start nothing; `status` and `plugins list` start each plugin themselves, so
    // inspecting uncached plugins first would start them twice. The cache is enough for parsing.
    let cache_only = command_word(&inv.args)
        .is_some_and(|(_, w)| matches!(w, "completions" | "status" | "plugins"));
    let infos = catalog::load_all(&inv.session, &inv.home, !cache_only).await;
    let root = root_command(&infos);
    let matches = match root.clone().try_get_matches_from(&inv.args) {
        Ok(m) => m,
        Err(e) => {
            let unknown = e.kind() == clap::error::ErrorKind::InvalidSubcommand;
            if let Some((_, word)) = command_word(&inv.args).filter(|_| unknown) {
                let e = crate::errors::not_installed(word, &inv.session.discovery.dirs(), &root);
                return report(&inv.session.terminal, word, &e);
            }
            return clap_error(e, inv.globals.json);
        }
    };
    let Some((name, sub)) = matches.subcommand() else {
        let mut root = root;
        let _ = root.print_help();
        return EXIT_OK;
    };
    match name {
        "status" => crate::builtins::status(inv.session.clone(), &infos, &inv.globals).await,
        "version" => crate::builtins::version(&infos, &inv.globals),
        "plugins" => {
            crate::builtins::plugins_list(inv.session.clone(), &inv.home, &inv.globals).await
        }
        // Deprecated aliases stay out of completions: they only keep old scripts working.
        "completions" => crate::builtins::completions(plugins_root(&infos), sub),
        "help" => {
            let topic: Vec<String> = sub
                .get_many::<String>("topic")
                .map(|t| t.cloned().collect())
                .unwrap_or_default();
            help_topic(root, &topic, inv.globals.json)
        }
        alias => match find_alias(&infos, alias) {
            Some((moniker, method, warning)) => {
                eprintln!("{warning}");
                let index = command_word(&inv.args).map_or(1, |(i, _)| i);
                let mut args = inv.args.clone();
                args.splice(index..=index, [moniker, method]);
                run_plugin_verb(inv, &args[index].clone(), args).await
            }
            None => EXIT_USAGE,
        },
    }
}

fn find_alias(infos: &[PluginInfo], name: &str) -> Option<(String, String, String)> {
    infos.iter().find_map(|info| {
        let (manifest, _) = info.manifest.as_ref()?.as_ref().ok()?;
        let alias = manifest.aliases.iter().find(|a| a.name == name)?;
        Some((
            manifest.name.clone(),
            alias.method.clone(),
            alias.warning.clone(),
        ))
    })
}

fn global_args(command: Command) -> Command {
    command
        .arg(
            Arg::new("json")
                .long("json")
                .global(true)
                .action(ArgAction::SetTrue)
                .help("Print the result as JSON, exactly as the method returned it"),
        )
        .arg(
            Arg::new("no-color")
                .long("no-color")
                .global(true)
                .action(ArgAction::SetTrue)
                .help("Never use colour (also: NO_COLOR=1)"),
        )
        .arg(
            Arg::new("no-daemon")
                .long("no-daemon")
                .global(true)
                .action(ArgAction::SetTrue)
                .help("Run plugins directly even when `koi daemon` is running"),
        )
        .arg(
            Arg::new("verbose")
                .short('v')
                .long("verbose")
                .global(true)
                .action(ArgAction::Count)
                .help("Log more (-v info, -vv debug); KOI_LOG overrides"),
        )
}

fn root_base() -> Command {
    let version = format!(
        "{} (git {}, protocol {})",
        env!("CARGO_PKG_VERSION"),
        env!("KOI_GIT_HASH"),
        koi_protocol::PROTOCOL_VERSION
    );
    global_args(
        Command::new("koi")
            .version(version)
            .about("Koi: a local-network toolkit. Capabilities come from koi-<name> plugins.")
            .disable_help_subcommand(true)
            .after_help(EXIT_CODES_HELP)
            .subcommand(Command::new("status").about("Show every plugin's state on one dashboard (live from koi daemon when it runs)"))
            .subcommand(Command::new("daemon").about("Run the long-lived host: supervise plugins, route events, serve the control socket and REST API (see docs/daemon.md)"))
            .subcommand(Command::new("version").about("Show koi's version, git hash, protocol version and each plugin's version"))
            .subcommand(
                Command::new("plugins")
                    .about("Manage plugins")
                    .subcommand(Command::new("list").about("List plugins found, with shadowed, non-executable, incompatible and failing ones flagged")),
            )
            .subcommand(
                Command::new("help")
                    .about("Show help for a command: koi help [<plugin> [<verb>]]")
                    .arg(Arg::new("topic").num_args(0..).action(ArgAction::Append)),
            )
            .subcommand(
                Command::new("completions")
                    .about("Print a shell completion script (plugin verbs included, from the manifest cache)")
                    .arg(Arg::new("shell").required(true).value_parser(["bash", "zsh", "fish", "elvish", "powershell"])),
            ),
    )
}

/// The full command tree: built-ins, plugins (with verbs where a manifest is known), aliases.
pub fn root_command(infos: &[PluginInfo]) -> Command {
    with_aliases(plugins_root(infos), infos)
}

/// Built-ins and plugins, without the deprecated aliases.
fn plugins_root(infos: &[PluginInfo]) -> Command {
    let mut root = root_base();
    for info in infos {
        let moniker = info.candidate.moniker.clone();
        root = root.subcommand(match &info.manifest {
            Some(Ok((manifest, _))) => clispec::plugin_command(manifest),
            Some(Err(e)) => Command::new(moniker).about(format!("(unusable: {})", e.message)),
            None => Command::new(moniker).about("(not inspected yet: run `koi plugins list`)"),
        });
    }
    root
}

/// `root` with each plugin's deprecated root aliases (hidden) added.
fn with_aliases(mut root: Command, infos: &[PluginInfo]) -> Command {
    let taken: Vec<String> = infos.iter().map(|i| i.candidate.moniker.clone()).collect();
    for info in infos {
        let Some(Ok((manifest, _))) = &info.manifest else {
            continue;
        };
        for alias in &manifest.aliases {
            if BUILTINS.contains(&alias.name.as_str()) || taken.contains(&alias.name) {
                continue;
            }
            if let Some(spec) = manifest.method(&alias.method) {
                root = root.subcommand(
                    clispec::verb_command(spec)
                        .name(alias.name.clone())
                        .hide(true),
                );
            }
        }
    }
    root
}

fn single_plugin_root(manifest: &Manifest) -> Command {
    root_base().subcommand(clispec::plugin_command(manifest))
}

/// Prints a `clap` outcome (help, version, or a usage error: as JSON under `--json`).
fn clap_error(e: clap::Error, json: bool) -> u8 {
    if !e.use_stderr() {
        let _ = e.print();
        return EXIT_OK;
    }
    if json {
        let text = e.render().to_string();
        crate::errors::print_json(None, &crate::errors::usage(&text, "koi --help"));
    } else {
        let _ = e.print();
    }
    EXIT_USAGE
}

fn help_topic(mut root: Command, topic: &[String], json: bool) -> u8 {
    let mut path = vec!["koi".to_owned()];
    let mut command = &mut root;
    for word in topic {
        let names: Vec<String> = command
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        match command.find_subcommand_mut(word) {
            Some(sub) => {
                path.push(word.clone());
                command = sub;
            }
            None => {
                let suggestion = names
                    .iter()
                    .map(|n| (strsim::jaro_winkler(n, word), n))
                    .filter(|(score, _)| *score > 0.7)
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, n)| format!(" Did you mean `{}`?", n))
                    .unwrap_or_default();
                let text = format!(
                    "error: `{}` has no command `{word}`.{suggestion} Run `{} --help` to see them.",
                    path.join(" "),
                    path.join(" ")
                );
                if json {
                    let help = format!("{} --help", path.join(" "));
                    crate::errors::print_json(None, &crate::errors::usage(&text, &help));
                } else {
                    eprintln!("{text}");
                }
                return EXIT_USAGE;
            }
        }
    }
    let mut command = command.clone().bin_name(path.join(" "));
    let _ = command.print_long_help();
    EXIT_OK
}

/// `koi <moniker> <verb> [args]`.
async fn run_plugin_verb(inv: &Invocation, moniker: &str, args: Vec<String>) -> u8 {
    let Some((index, _)) = command_word(&args) else {
        return EXIT_USAGE;
    };
    let rest = &args[index + 1..];
    let wants_help = rest.is_empty()
        || rest.first().is_some_and(|w| w == "help")
        || rest
            .iter()
            .take_while(|a| *a != "--")
            .any(|a| a == "-h" || a == "--help");
    if wants_help {
        // Help comes from the manifest cache: no plugin is started when the cache is valid.
        return match catalog::load_one(&inv.session, &inv.home, moniker).await {
            Ok(manifest) => {
                let mut args = args.clone();
                if rest.first().is_some_and(|w| w == "help") {
                    args.remove(index + 1);
                    args.push("--help".into());
                }
                match single_plugin_root(&manifest).try_get_matches_from(&args) {
                    Ok(_) => EXIT_OK,
                    Err(e) => clap_error(e, inv.globals.json),
                }
            }
            Err(e) => report(&inv.session.terminal, moniker, &e),
        };
    }
    let daemon = if inv.globals.no_daemon {
        None
    } else {
        crate::forward::connect(&inv.home, inv.session.terminal.clone()).await
    };
    let target = match daemon {
        Some(peer) => Target::Daemon(peer),
        None => match inv.session.connect(moniker).await {
            Ok(c) => Target::Direct(c),
            Err(e) => return report(&inv.session.terminal, moniker, &e),
        },
    };
    let manifest = match target
        .manifest_for_parsing(&inv.session, &inv.home, moniker)
        .await
    {
        Ok(m) => m,
        Err(e) => return report(&inv.session.terminal, moniker, &e),
    };
    let matches = match single_plugin_root(&manifest).try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) => return clap_error(e, inv.globals.json),
    };
    let Some((verb, verb_matches)) = matches.subcommand().and_then(|(_, m)| m.subcommand()) else {
        return EXIT_USAGE;
    };
    let params = match manifest.method(verb) {
        Some(spec) => match clispec::params_from_matches(spec, verb_matches) {
            Ok(p) => p,
            Err(problem) => {
                let help = format!("koi {moniker} {verb} --help");
                if inv.globals.json {
                    let e = crate::errors::usage(&problem, &help);
                    crate::errors::print_json(Some(moniker), &e);
                } else {
                    eprintln!("error: {problem}\n\nFor more information, try '{help}'.");
                }
                return EXIT_USAGE;
            }
        },
        None if verb == clispec::STATUS_VERB => Value::Null,
        None => return EXIT_USAGE,
    };
    let label = format!("{moniker} {verb}");
    let mut interrupted = false;
    // A live view ($/view) follows the terminal's size while the call runs (host/src/view.rs).
    let resize = crate::view::follow_resizes(&inv.session.terminal, inv.globals.json);
    let outcome = call_with_interrupt(
        &target,
        &inv.session.terminal,
        moniker,
        verb,
        params,
        &mut interrupted,
    )
    .await;
    if let Some(task) = resize {
        task.abort();
    }
    // The terminal is restored on every path out of the call, before anything else is printed.
    let viewed = inv.session.terminal.live.finish();
    inv.session.terminal.end_questions().await;
    inv.session.terminal.finish_progress();
    if viewed && interrupted && outcome.is_ok() {
        return EXIT_INTERRUPTED; // a live view ended with Ctrl-C: its screen was the output
    }
    match outcome {
        Ok(result) => {
            let spec = manifest.method(verb);
            // A stream the user ended with Ctrl-C ends with its items: the final result (what
            // was present at the end) would read as one more item, or an empty table.
            let streamed = spec.is_some_and(|s| s.stream_item.is_some());
            if !(streamed && interrupted) {
                print_result(&inv.session.terminal, &result, spec.map(|s| &s.result));
            }
            EXIT_OK
        }
        Err(e) => {
            let daemon_gone = matches!(&target, Target::Daemon(peer) if peer.is_closed());
            let spec = manifest.method(verb);
            let verbose = inv.globals.verbosity > 0;
            let e = crate::errors::for_call(e, daemon_gone, moniker, verb, spec, verbose);
            report(&inv.session.terminal, &label, &e)
        }
    }
}

fn print_result(terminal: &Terminal, result: &Value, schema: Option<&Value>) {
    let text = if terminal.json {
        format!("{}\n", crate::sanitize::json(result))
    } else {
        render::value_with(terminal.style, result, schema)
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Prints an error as one paragraph naming the command, the cause and the next step, and returns
/// the exit code for it.
pub fn report(terminal: &Terminal, label: &str, e: &ErrorObject) -> u8 {
    let code = exit_code_for(e);
    if terminal.json {
        let plugin = label.split(' ').next().filter(|m| !m.is_empty());
        crate::errors::print_json(plugin, e);
        return code;
    }
    if code == EXIT_INTERRUPTED {
        eprintln!("Cancelled.");
        return code;
    }
    let style = render::Style::new(terminal.style.color && std::io::stderr().is_terminal());
    let mut text = format!(
        "{} {label}: {}",
        style.red("error:"),
        crate::sanitize::line(e.message.trim_end_matches('.'))
    );
    text.push('.');
    if let Some(hint) = e.hint() {
        text.push_str(&format!("\n  {}", crate::sanitize::text(hint)));
    }
    eprintln!("{text}");
    code
}

/// Maps an error to the documented exit code.
pub fn exit_code_for(e: &ErrorObject) -> u8 {
    let payload = e
        .data
        .as_ref()
        .and_then(|d| d.get("payload"))
        .and_then(Value::as_str);
    // A plugin sent another plugin something it refused: a plugin bug, not the user's arguments.
    let plugin_caused = e.data.as_ref().and_then(|d| d.get("caller")).is_some();
    match e.code {
        codes::REQUEST_CANCELLED => EXIT_INTERRUPTED,
        _ if plugin_caused => EXIT_PLUGIN_FAILED,
        codes::INVALID_PARAMS | codes::METHOD_NOT_FOUND => EXIT_USAGE,
        codes::SCHEMA_VIOLATION if payload == Some("params") => EXIT_USAGE,
        codes::USER_INPUT_UNAVAILABLE => EXIT_METHOD_FAILED,
        c if c >= 0 => EXIT_METHOD_FAILED,
        _ => EXIT_PLUGIN_FAILED,
    }
}
