//! `sting cluster …`: operator commands against a running node's admin API
//! (`/api/system/cluster*`), so they work from any machine that can reach one node.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, their state and load, and which nodes own conversations and shards.
    Status(Target),
    /// Hand a node's conversations and shards over to the other nodes; it keeps serving
    /// requests (routing them to the new owners) but owns nothing until restarted.
    Drain {
        /// The node to drain (its name as `status` lists it).
        node: String,
        #[command(flatten)]
        target: Target,
    },
    /// Drain a node, then stop it once its actors have moved.
    Leave {
        /// The node that leaves [default: the node --url points at].
        node: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

/// Which node to ask, and as whom.
#[derive(Debug, Args)]
pub struct Target {
    /// Base URL of any node's API.
    #[arg(long, env = "STING_URL", default_value = "https://localhost:5050")]
    url: String,
    /// An admin's session token (from POST /api/auth/login).
    #[arg(long, env = "STING_TOKEN", hide_env_values = true)]
    token: String,
    /// PEM certificate to trust for HTTPS, e.g. the node's generated <data_dir>/tls/cert.pem
    /// [default: ./data/tls/cert.pem when it exists, else the system's roots].
    #[arg(long, value_name = "PATH")]
    ca_cert: Option<PathBuf>,
}

pub async fn run(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status(target) => {
            let status = target.request("GET", "/api/system/cluster", None).await?;
            print_status(&status);
        }
        ClusterCommand::Drain { node, target } => {
            post_command(&target, "drain", Some(node)).await?
        }
        ClusterCommand::Leave { node, target } => post_command(&target, "leave", node).await?,
    }
    Ok(())
}

/// Posts a drain or leave command for `node` and prints the node's new state.
async fn post_command(target: &Target, name: &str, node: Option<String>) -> anyhow::Result<()> {
    let path = format!("/api/system/cluster/{name}");
    let done = target
        .request("POST", &path, Some(json!({ "node": node })))
        .await?;
    let text = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    println!("{} is {}", text(&done["node"]), text(&done["state"]));
    Ok(())
}

impl Target {
    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        let ca = self
            .ca_cert
            .clone()
            .or_else(|| Some(PathBuf::from("data/tls/cert.pem")).filter(|p| p.is_file()));
        if let Some(ca) = ca {
            let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
            client = client.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("{} is not a PEM certificate", ca.display()))?,
            );
        }
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let request = match method {
            "GET" => client.build()?.get(&url),
            _ => client
                .build()?
                .post(&url)
                .json(&body.unwrap_or(Value::Null)),
        };
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("calling {url}"))?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = value["error"]["message"].as_str().unwrap_or("no details");
            bail!("{url} answered {status}: {message}");
        }
        Ok(value)
    }
}

fn print_status(status: &Value) {
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    println!(
        "answered by {} · placement: {}",
        text(&status["node"]),
        status["placement"]
            .as_array()
            .map(|nodes| nodes.iter().map(text).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    );
    println!(
        "{:<16} {:<9} {:<22} {:>13} {:>6} {:>5}  {:<28} models",
        "NODE", "STATE", "CLUSTER ADDRESS", "CONVERSATIONS", "SHARDS", "CPU%", "HTTP"
    );
    for member in status["members"].as_array().into_iter().flatten() {
        let marker = if member["local"].as_bool() == Some(true) {
            "*"
        } else {
            ""
        };
        let models = member["loaded_models"]
            .as_array()
            .map(|m| m.iter().map(text).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        println!(
            "{:<16} {:<9} {:<22} {:>13} {:>6} {:>5.0}  {:<28} {}",
            format!("{}{marker}", text(&member["node"])),
            text(&member["state"]),
            text(&member["address"]),
            member["conversations"].as_u64().unwrap_or(0),
            member["shards"].as_u64().unwrap_or(0),
            member["cpu_percent"].as_f64().unwrap_or(0.0),
            text(&member["http_address"]),
            models,
        );
    }
}
