//! The security flags and subcommands of `shardline` (docs/security.md), kept apart from the
//! main command file so that they merge cleanly with other work on it.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use shardline_net::auth::acl::parse_resource;
use shardline_net::auth::store::SECURITY_FILE_NAME;
use shardline_net::auth::{AclEntry, Operation, Permission, SecurityFile};
use shardline_net::client::{Client, ClientConfig, ClientTls, Credentials};
use shardline_net::protocol::{AlterSecurityRequest, SecurityOp};
use shardline_net::tls::ServerTlsConfig;

/// Client side TLS and credentials (every client command). Secrets never come from flags
/// (they would show in `ps`): from files or environment variables.
#[derive(Debug, Args)]
pub(crate) struct ClientSecurityArgs {
    /// Authenticate as this user; the password comes from --password-file or $SHARDLINE_PASSWORD
    #[arg(long, global = true, value_name = "NAME")]
    user: Option<String>,
    /// File whose first line is the password of --user
    #[arg(long, global = true, value_name = "FILE", requires = "user")]
    password_file: Option<PathBuf>,
    /// Authenticate with the API token in this file (or set $SHARDLINE_TOKEN)
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "user")]
    token_file: Option<PathBuf>,
    /// Connect with TLS, trusting the CA certificates in this PEM file
    #[arg(long, global = true, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for servers that require mutual TLS
    #[arg(long, global = true, value_name = "FILE", requires = "tls_client_key")]
    tls_client_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-client-cert
    #[arg(long, global = true, value_name = "FILE", requires = "tls_client_cert")]
    tls_client_key: Option<PathBuf>,
    /// Name to verify in the server certificate [default: the host of --addr]
    #[arg(long, global = true, value_name = "NAME")]
    tls_server_name: Option<String>,
}

fn first_line(path: &Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

impl ClientSecurityArgs {
    pub(crate) fn is_set(&self) -> bool {
        self.tls_ca.is_some()
            || self.tls_client_cert.is_some()
            || self.tls_server_name.is_some()
            || self.user.is_some()
            || self.token_file.is_some()
    }

    /// Applies the flags to a client configuration.
    pub(crate) fn apply(&self, config: &mut ClientConfig) -> anyhow::Result<()> {
        config.credentials = self.credentials()?;
        self.apply_tls(config)
    }

    fn credentials(&self) -> anyhow::Result<Option<Credentials>> {
        if let Some(user) = &self.user {
            let password = match &self.password_file {
                Some(f) => first_line(f, "password")?,
                None => std::env::var("SHARDLINE_PASSWORD")
                    .context("--user needs --password-file or $SHARDLINE_PASSWORD")?,
            };
            return Ok(Some(Credentials::Password {
                username: user.clone(),
                password,
            }));
        }
        if let Some(f) = &self.token_file {
            return Ok(Some(Credentials::Token(first_line(f, "token")?)));
        }
        Ok(std::env::var("SHARDLINE_TOKEN")
            .ok()
            .map(Credentials::Token))
    }

    fn apply_tls(&self, config: &mut ClientConfig) -> anyhow::Result<()> {
        let Some(ca) = &self.tls_ca else {
            if self.tls_client_cert.is_some() || self.tls_server_name.is_some() {
                bail!("--tls-client-cert and --tls-server-name need --tls-ca");
            }
            return Ok(());
        };
        let cert = match (&self.tls_client_cert, &self.tls_client_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        let mut tls = ClientTls::new(ca, cert)?;
        if let Some(name) = &self.tls_server_name {
            tls = tls.with_server_name(name)?;
        }
        config.tls = Some(tls);
        Ok(())
    }
}

/// Server side TLS (`serve`); overrides `[server.tls]` of the config file.
#[derive(Debug, Args)]
pub(crate) struct ServeTlsArgs {
    /// Serve TLS with this certificate chain (PEM, leaf first) (server.tls.cert)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert (server.tls.key)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by these CAs: mutual TLS (server.tls.client_ca)
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// Master keys for encrypted topics (engine.encryption_key_file; see
    /// `shardline encryption-key generate`)
    #[arg(long, value_name = "FILE")]
    encryption_key_file: Option<PathBuf>,
    /// New topics matching these are encrypted at rest: names, or prefixes ending in '*'
    /// (server.encryption.topics)
    #[arg(long, value_name = "PATTERN", value_delimiter = ',')]
    encrypt_topics: Vec<String>,
    /// Require authentication and ACLs (server.auth.enabled)
    #[arg(long)]
    auth: bool,
}

impl ServeTlsArgs {
    /// Encryption and authentication flags.
    pub(crate) fn apply_security(
        &self,
        engine: &mut shardline_engine::EngineConfig,
        server: &mut shardline_net::server::ServerConfig,
    ) {
        if let Some(f) = &self.encryption_key_file {
            engine.encryption_key_file = Some(f.clone());
        }
        if !self.encrypt_topics.is_empty() {
            server.encryption.topics = self.encrypt_topics.clone();
        }
        if self.auth {
            server.auth.enabled = true;
        }
    }

    pub(crate) fn apply(&self, tls: &mut Option<ServerTlsConfig>) -> anyhow::Result<()> {
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            let mut t = ServerTlsConfig::new(cert, key);
            if let Some(old) = tls.take() {
                t.client_ca = old.client_ca;
                t.handshake_timeout_ms = old.handshake_timeout_ms;
            }
            *tls = Some(t);
        }
        if let Some(ca) = &self.tls_client_ca {
            let t = tls
                .as_mut()
                .context("--tls-client-ca needs a server certificate (--tls-cert, --tls-key)")?;
            t.client_ca = Some(ca.clone());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Offline management of the security file: `user`, `token`, `acl`.

/// Where the security file is: `--security-file`, or `security.json` in `--data-dir` (by
/// default the data directory `serve` uses by default).
#[derive(Debug, Args)]
pub(crate) struct FileArgs {
    /// The server's data directory (the file is DIR/security.json) [default: as `serve`:
    /// $SHARDLINE_DATA_DIR, $XDG_DATA_HOME/shardline, /var/lib/shardline as root,
    /// ~/.local/share/shardline]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The security file itself (server.auth.file)
    #[arg(long, value_name = "FILE", conflicts_with = "data_dir")]
    security_file: Option<PathBuf>,
}

impl FileArgs {
    fn path(&self) -> PathBuf {
        match (&self.security_file, &self.data_dir) {
            (Some(f), _) => f.clone(),
            (None, Some(d)) => d.join(SECURITY_FILE_NAME),
            (None, None) => shardline_net::cli::config::default_data_dir().join(SECURITY_FILE_NAME),
        }
    }
}

/// The offline subcommands, flattened into the main command list.
#[derive(Debug, Subcommand)]
pub(crate) enum SecurityCommand {
    /// Manage users: offline on the security file (a running server re-reads it), or with
    /// --addr on a running server (on a cluster: every node).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage API tokens: offline (revocation reaches a running server within a second), or
    /// with --addr on a running server (on a cluster: every node).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage ACLs: offline (a running server re-reads the file), or with --addr on a
    /// running server (on a cluster: every node).
    #[command(subcommand)]
    Acl(AclCommand),
    /// Encryption-at-rest key files.
    #[command(subcommand, name = "encryption-key")]
    EncryptionKey(KeyCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Write a new key file with one random 256-bit key (refuses to overwrite).
    Generate {
        file: PathBuf,
        /// Key id (rotation: generate a new id, merge it into the file, make it active)
        #[arg(long, default_value_t = 1)]
        id: u32,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Add a user; the password is the first line of --new-password-file (offline also
    /// --password-file), or of stdin.
    Add {
        name: String,
        /// Offline: the new user's password file. With --addr this is the password of --user
        /// (the same flag): give the new user's with --new-password-file or stdin
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// File whose first line is the new user's password
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Remove a user and its tokens.
    Remove {
        name: String,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Set a user's password (first line of --new-password-file, offline also
    /// --password-file, or of stdin); its sessions end.
    Passwd {
        name: String,
        /// Offline: the new password's file. With --addr this is the password of --user
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// File whose first line is the new password
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
        #[command(flatten)]
        file: FileArgs,
    },
    /// List users.
    List {
        #[command(flatten)]
        file: FileArgs,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token acting as PRINCIPAL; prints the token (shown only once).
    Create {
        principal: String,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Revoke a token by its id.
    Revoke {
        id: String,
        #[command(flatten)]
        file: FileArgs,
    },
    /// List tokens: id, principal, created, description.
    List {
        #[command(flatten)]
        file: FileArgs,
    },
}

#[derive(Debug, Args)]
pub(crate) struct AclArgs {
    /// Principal name, or '*' for every authenticated principal
    #[arg(long)]
    principal: String,
    /// topic:NAME, topic-prefix:PREFIX, group:NAME, group-prefix:PREFIX or cluster
    #[arg(long)]
    resource: String,
    /// produce, consume, create, delete, describe or admin
    #[arg(long, value_parser = parse_operation)]
    operation: Operation,
    /// A deny entry (deny wins over allow)
    #[arg(long)]
    deny: bool,
    #[command(flatten)]
    file: FileArgs,
}

fn parse_operation(s: &str) -> Result<Operation, String> {
    Operation::ALL
        .into_iter()
        .find(|o| format!("{o:?}").eq_ignore_ascii_case(s))
        .ok_or_else(|| "expected produce, consume, create, delete, describe or admin".into())
}

impl AclArgs {
    fn entry(&self) -> anyhow::Result<AclEntry> {
        let (resource, pattern_type, pattern) =
            parse_resource(&self.resource).map_err(anyhow::Error::msg)?;
        let e = AclEntry {
            principal: self.principal.clone(),
            resource,
            pattern,
            pattern_type,
            operation: self.operation,
            permission: if self.deny {
                Permission::Deny
            } else {
                Permission::Allow
            },
        };
        e.validate().map_err(anyhow::Error::msg)?;
        Ok(e)
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum AclCommand {
    /// Add an entry.
    Add(AclArgs),
    /// Remove an entry (all fields must match).
    Remove(AclArgs),
    /// List entries.
    List {
        #[command(flatten)]
        file: FileArgs,
    },
}

/// The first line of `file`, or of stdin.
fn read_password(file: Option<&Path>) -> anyhow::Result<String> {
    match file {
        Some(p) => first_line(p, "password"),
        None => {
            let mut line = String::new();
            io::stdin().lock().read_line(&mut line).context("stdin")?;
            Ok(line.trim_end_matches(['\n', '\r']).to_string())
        }
    }
}

fn edit(
    file: &FileArgs,
    f: impl FnOnce(&mut SecurityFile) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let path = file.path();
    let mut db = SecurityFile::load(&path)?;
    f(&mut db)?;
    db.save(&path)?;
    Ok(())
}

#[allow(
    clippy::too_many_lines,
    reason = "one short arm per security subcommand"
)]
pub(crate) fn run(command: SecurityCommand) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match command {
        SecurityCommand::EncryptionKey(KeyCommand::Generate { file, id }) => {
            let text = shardline_engine::crypto::Keyring::generate_file_text(id)?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options
                .open(&file)
                .with_context(|| format!("cannot create {}", file.display()))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            writeln!(out, "key {id} written to {}", file.display())?;
        }
        SecurityCommand::User(UserCommand::Add {
            name,
            password_file,
            new_password_file,
            file,
        }) => {
            let password = read_password(new_password_file.or(password_file).as_deref())?;
            edit(&file, |db| Ok(db.add_user(&name, &password)?))?;
            writeln!(out, "user {name} added")?;
        }
        SecurityCommand::User(UserCommand::Passwd {
            name,
            password_file,
            new_password_file,
            file,
        }) => {
            let password = read_password(new_password_file.or(password_file).as_deref())?;
            edit(&file, |db| Ok(db.set_password(&name, &password)?))?;
            writeln!(out, "password of {name} changed")?;
        }
        SecurityCommand::User(UserCommand::Remove { name, file }) => {
            let mut tokens = 0;
            edit(&file, |db| {
                tokens = db.remove_user(&name)?;
                Ok(())
            })?;
            writeln!(out, "user {name} removed ({tokens} tokens revoked)")?;
        }
        SecurityCommand::User(UserCommand::List { file }) => {
            for (name, u) in &SecurityFile::load(&file.path())?.users {
                writeln!(out, "{name}\tcreated_ms={}", u.created_ms)?;
            }
        }
        SecurityCommand::Token(TokenCommand::Create {
            principal,
            description,
            file,
        }) => {
            let mut token = String::new();
            edit(&file, |db| {
                token = db.create_token(&principal, &description)?.1;
                Ok(())
            })?;
            writeln!(out, "{token}")?;
        }
        SecurityCommand::Token(TokenCommand::Revoke { id, file }) => {
            edit(&file, |db| {
                db.revoke_token(&id)?;
                Ok(())
            })?;
            writeln!(out, "token {id} revoked")?;
        }
        SecurityCommand::Token(TokenCommand::List { file }) => {
            for (id, t) in &SecurityFile::load(&file.path())?.tokens {
                writeln!(
                    out,
                    "{id}\t{}\tcreated_ms={}\t{}",
                    t.principal, t.created_ms, t.description
                )?;
            }
        }
        SecurityCommand::Acl(AclCommand::Add(a)) => {
            let e = a.entry()?;
            edit(&a.file, |db| {
                if !db.acls.contains(&e) {
                    db.acls.push(e.clone());
                }
                Ok(())
            })?;
            writeln!(out, "added: {e}")?;
        }
        SecurityCommand::Acl(AclCommand::Remove(a)) => {
            let e = a.entry()?;
            edit(&a.file, |db| {
                let before = db.acls.len();
                db.acls.retain(|x| *x != e);
                if db.acls.len() == before {
                    bail!("no such entry: {e}");
                }
                Ok(())
            })?;
            writeln!(out, "removed: {e}")?;
        }
        SecurityCommand::Acl(AclCommand::List { file }) => {
            for e in &SecurityFile::load(&file.path())?.acls {
                writeln!(out, "{e}")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Online: with --addr, the changes go to that server (AlterSecurity, api 41); on a cluster they
// go through the controller and reach every node (docs/security.md, "On a cluster").

/// Whether `command` changes users, tokens or ACLs (what a server can do with --addr).
pub(crate) fn online(command: &SecurityCommand) -> bool {
    matches!(
        command,
        SecurityCommand::User(
            UserCommand::Add { .. } | UserCommand::Remove { .. } | UserCommand::Passwd { .. }
        ) | SecurityCommand::Token(TokenCommand::Create { .. } | TokenCommand::Revoke { .. })
            | SecurityCommand::Acl(AclCommand::Add(_) | AclCommand::Remove(_))
    )
}

fn no_file(file: &FileArgs) -> anyhow::Result<()> {
    if file.data_dir.is_some() || file.security_file.is_some() {
        bail!(
            "--addr sends the change to a server; --data-dir and --security-file edit a file offline: pass one of them"
        );
    }
    Ok(())
}

fn acl_request(op: SecurityOp, a: &AclArgs) -> anyhow::Result<AlterSecurityRequest> {
    no_file(&a.file)?;
    a.entry()?;
    Ok(AlterSecurityRequest {
        op,
        name: a.principal.clone(),
        resource: a.resource.clone(),
        operation: format!("{:?}", a.operation).to_lowercase(),
        deny: a.deny,
        ..AlterSecurityRequest::default()
    })
}

/// The request of an [`online`] command.
fn online_request(command: SecurityCommand) -> anyhow::Result<AlterSecurityRequest> {
    let user = |op, name: String, secret: String| AlterSecurityRequest {
        op,
        name,
        secret,
        ..AlterSecurityRequest::default()
    };
    Ok(match command {
        // `password_file` is the global flag's value here: the password of --user.
        SecurityCommand::User(UserCommand::Add {
            name,
            new_password_file,
            file,
            ..
        }) => {
            no_file(&file)?;
            let password = read_password(new_password_file.as_deref())?;
            user(SecurityOp::UserAdd, name, password)
        }
        SecurityCommand::User(UserCommand::Passwd {
            name,
            new_password_file,
            file,
            ..
        }) => {
            no_file(&file)?;
            let password = read_password(new_password_file.as_deref())?;
            user(SecurityOp::UserPasswd, name, password)
        }
        SecurityCommand::User(UserCommand::Remove { name, file }) => {
            no_file(&file)?;
            user(SecurityOp::UserRemove, name, String::new())
        }
        SecurityCommand::Token(TokenCommand::Create {
            principal,
            description,
            file,
        }) => {
            no_file(&file)?;
            AlterSecurityRequest {
                description,
                ..user(SecurityOp::TokenCreate, principal, String::new())
            }
        }
        SecurityCommand::Token(TokenCommand::Revoke { id, file }) => {
            no_file(&file)?;
            user(SecurityOp::TokenRevoke, id, String::new())
        }
        SecurityCommand::Acl(AclCommand::Add(a)) => acl_request(SecurityOp::AclAdd, &a)?,
        SecurityCommand::Acl(AclCommand::Remove(a)) => acl_request(SecurityOp::AclRemove, &a)?,
        _ => bail!("this command reads or writes files only: leave out --addr"),
    })
}

/// Sends an [`online`] command to the server; prints what it did (a new token alone, as
/// offline, so that `> file` keeps it).
pub(crate) fn run_online(client: &Client, command: SecurityCommand) -> anyhow::Result<()> {
    let r = client.alter_security(online_request(command)?)?;
    let mut out = io::stdout().lock();
    if r.token.is_empty() {
        writeln!(out, "{}", r.message)?;
    } else {
        writeln!(out, "{}", r.token)?;
    }
    out.flush()?;
    Ok(())
}
