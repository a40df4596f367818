//! `jobvisor token new`: makes a bearer token and the entry for the
//! server's token file (which holds only its SHA-256 digest).

use crate::api::auth::{Permission, new_token};
use clap::{Args, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a new token, and the JSON entry to add to the token file.
    New {
        /// The caller's name, recorded with every control call it makes.
        #[arg(long)]
        name: String,
        /// read, start, control, work or admin (repeat for more).
        #[arg(long = "permission", value_parser = parse_permission, required = true)]
        permissions: Vec<Permission>,
        /// Only jobs with this label, key=value (repeat for more).
        #[arg(long = "scope", value_parser = parse_label)]
        scope: Vec<(String, String)>,
    },
}

fn parse_permission(raw: &str) -> Result<Permission, String> {
    serde_json::from_value(serde_json::Value::String(raw.to_string()))
        .map_err(|_| format!("{raw:?} is not a permission (read, start, control, work, admin)"))
}

fn parse_label(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{raw:?} is not key=value"))
}

pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let TokenCommand::New {
        name,
        permissions,
        scope,
    } = args.command;
    let (token, entry) = new_token(&name, &permissions, &scope.into_iter().collect());
    say!("token (give it to the caller; it is not stored anywhere): {token}");
    say!("entry for the token file's \"tokens\" list:");
    say!("{}", serde_json::to_string_pretty(&entry)?);
    Ok(ExitCode::SUCCESS)
}
