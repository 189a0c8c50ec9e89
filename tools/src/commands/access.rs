//! `strata user create | list | delete | passwd`, `strata acl add | list | remove` and
//! `strata whoami`, for a cluster that requires a login.

use std::io::BufRead;

use clap::{Args, Subcommand};
use serde_json::json;
use strata_client::AclRule;

use super::Connection;
use crate::output;

/// User commands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; the password comes from --new-password or standard input.
    Create {
        /// User name.
        name: String,
        /// Its password (else read from the first line of standard input).
        #[arg(long)]
        new_password: Option<String>,
    },
    /// List users.
    List,
    /// Delete a user (its tokens stop working).
    Delete {
        /// User name.
        name: String,
    },
    /// Set a user's password (your own, or anyone's with alter on the cluster).
    Passwd {
        /// User name.
        name: String,
        /// The new password (else read from the first line of standard input).
        #[arg(long)]
        new_password: Option<String>,
    },
}

/// An ACL rule on the command line.
#[derive(Debug, Args)]
pub struct RuleArgs {
    /// The user it allows, or `*` for every user.
    #[arg(long)]
    principal: String,
    /// Resource kind: topic, group, aggregation or cluster.
    #[arg(long)]
    resource: String,
    /// Resource name, a prefix ending in `*`, or `*`.
    #[arg(long, default_value = "*")]
    name: String,
    /// Operation: read, write, create, delete, describe, alter or all.
    #[arg(long)]
    operation: String,
}

impl RuleArgs {
    fn rule(&self) -> AclRule {
        strata_client::acl_rule(&self.principal, &self.resource, &self.name, &self.operation)
    }
}

/// ACL commands.
#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Add an allow rule.
    Add(RuleArgs),
    /// List the rules.
    List,
    /// Remove a rule.
    Remove(RuleArgs),
}

/// The password given, or the first line of standard input.
fn password(given: Option<String>) -> anyhow::Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Runs a user command.
pub async fn user(command: UserCommand, connection: &Connection, json: bool) -> anyhow::Result<()> {
    let access = connection.connect().await?.access();
    let done = |what: &str, name: &str| {
        if json {
            output::json(&json!({"user": name, "done": what}));
        } else {
            println!("{what} user {name}");
        }
    };
    match command {
        UserCommand::Create {
            name,
            new_password: p,
        } => {
            access.create_user(&name, &password(p)?).await?;
            done("created", &name);
        }
        UserCommand::List => {
            let names = access.list_users().await?;
            if json {
                for n in &names {
                    output::json(&json!({"user": n}));
                }
            } else {
                let rows: Vec<Vec<String>> = names.into_iter().map(|n| vec![n]).collect();
                output::table(&["USER"], &rows);
            }
        }
        UserCommand::Delete { name } => {
            access.delete_user(&name).await?;
            done("deleted", &name);
        }
        UserCommand::Passwd {
            name,
            new_password: p,
        } => {
            access.change_password(&name, &password(p)?).await?;
            done("changed the password of", &name);
        }
    }
    Ok(())
}

fn rule_json(r: &AclRule) -> serde_json::Value {
    json!({"principal": r.principal, "resource": r.resource, "name": r.pattern, "operation": r.operation})
}

/// Runs an ACL command.
pub async fn acl(command: AclCommand, connection: &Connection, json: bool) -> anyhow::Result<()> {
    let access = connection.connect().await?.access();
    match command {
        AclCommand::Add(args) => {
            access.add_acl(args.rule()).await?;
            if json {
                output::json(&rule_json(&args.rule()));
            } else {
                println!("added");
            }
        }
        AclCommand::Remove(args) => {
            access.remove_acl(args.rule()).await?;
            if json {
                output::json(&rule_json(&args.rule()));
            } else {
                println!("removed");
            }
        }
        AclCommand::List => {
            let rules = access.list_acls().await?;
            if json {
                for r in &rules {
                    output::json(&rule_json(r));
                }
            } else {
                let rows: Vec<Vec<String>> = rules
                    .iter()
                    .map(|r| {
                        vec![
                            r.principal.clone(),
                            r.resource.clone(),
                            r.pattern.clone(),
                            r.operation.clone(),
                        ]
                    })
                    .collect();
                output::table(&["PRINCIPAL", "RESOURCE", "NAME", "OPERATION"], &rows);
            }
        }
    }
    Ok(())
}

/// Runs `strata whoami`.
pub async fn whoami(connection: &Connection, json: bool) -> anyhow::Result<()> {
    let me = connection.connect().await?.access().who_am_i().await?;
    if json {
        output::json(
            &json!({"user": me.user, "superuser": me.superuser, "authentication_required": me.authentication_required}),
        );
    } else {
        let role = if me.superuser { " (superuser)" } else { "" };
        let login = if me.authentication_required {
            "this cluster requires a login"
        } else {
            "this cluster requires no login"
        };
        println!("{}{role}; {login}", me.user);
    }
    Ok(())
}
