//! `session inspect`: one session of the Redis session store, read without
//! refreshing its TTL.

use clap::Args;
use serde_json::json;

use crate::render::{pairs, preview};
use crate::{CliError, CliResult, Output};

/// Arguments of `session inspect`.
#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// `<tenant>/<session id>`.
    id: String,
    /// Redis URL of the session store.
    #[arg(
        long,
        env = "AGENTSCALE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    url: String,
    /// Key prefix of the session store.
    #[arg(long, env = "AGENTSCALE_KEY_PREFIX", default_value = "agentscale")]
    key_prefix: String,
    /// How many of the latest history entries to show.
    #[arg(long, default_value_t = 10)]
    history: usize,
}

#[cfg(feature = "redis")]
pub(crate) async fn inspect(args: &InspectArgs) -> CliResult<Output> {
    use agentscale_core::{SessionKey, SessionStore};
    use agentscale_state::redis::{RedisSessionStore, RedisStateConfig};

    let Some((tenant, session)) = args.id.split_once('/') else {
        return Err(CliError::Usage(format!(
            "session id {:?}: expected <tenant>/<session id>",
            args.id
        )));
    };
    let key = SessionKey::new(tenant, session)?;
    let config = RedisStateConfig::new(args.url.as_str())
        .with_key_prefix(args.key_prefix.as_str())
        .with_refresh_on_read(false);
    let store = RedisSessionStore::connect(config)
        .await
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    let state = store.get(&key).await?;
    let history = store.history(&key, args.history.min(10_000)).await?;
    let Some(state) = state.or_else(|| {
        (!history.is_empty()).then(|| agentscale_core::SessionState {
            version: 0,
            data: Default::default(),
        })
    }) else {
        return Err(CliError::Usage(format!("no session {tenant}/{session}")));
    };
    let mut rows = vec![
        ("tenant", tenant.to_string()),
        ("session", session.to_string()),
        ("version", state.version.to_string()),
        ("data bytes", state.data.len().to_string()),
        ("data", preview(&state.data[..state.data.len().min(400)])),
        ("history shown", history.len().to_string()),
    ];
    let shown: Vec<String> = history.iter().map(|h| preview(h)).collect();
    for h in &shown {
        rows.push(("  entry", h.clone()));
    }
    let json = json!({
        "tenant": tenant,
        "session": session,
        "version": state.version,
        "data_bytes": state.data.len(),
        "data": std::str::from_utf8(&state.data).ok(),
        "data_hex": std::str::from_utf8(&state.data).is_err().then(|| crate::render::hex(&state.data)),
        "history": shown,
    });
    Ok(Output {
        human: pairs(&rows),
        json,
    })
}

#[cfg(not(feature = "redis"))]
pub(crate) async fn inspect(_args: &InspectArgs) -> CliResult<Output> {
    Err(CliError::Usage(
        "this agentscale binary was built without the `redis` feature".into(),
    ))
}
