//! `prefold-token`: mints a write token signed with `PREFOLD_TOKEN_SECRET`.
//!
//! ```text
//! PREFOLD_TOKEN_SECRET=… prefold-token --scope 'write:comment/* write:user/u1' --ttl 1h --sub u1
//! ```
//!
//! The token is an HS256 JWT (see `prefold_core::auth`); any JWT library can
//! mint the same with the same secret. It is printed on standard output,
//! alone, so that `TOKEN=$(prefold-token …)` works.

use std::process::ExitCode;

use clap::Parser;
use prefold_core::auth::{check_secret, mint, Claims, VAR_TOKEN_SECRET};

#[derive(Parser)]
#[command(name = "prefold-token", about = "Mint a prefold write token")]
struct Args {
    /// Space-separated grants: `write:*`, `write:TYPE/*`, `write:KEY`.
    #[arg(long, default_value = "write:*")]
    scope: String,
    /// Lifetime: seconds, or a number with `s`, `m`, `h` or `d`.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: u64,
    /// Who the token is for (shown in logs).
    #[arg(long)]
    sub: Option<String>,
    /// The secret (default: the environment; prefer it, since command lines
    /// are visible to other users).
    #[arg(long, env = VAR_TOKEN_SECRET, hide_env_values = true)]
    secret: String,
}

fn parse_ttl(s: &str) -> Result<u64, String> {
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a lifetime"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too long"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = check_secret(VAR_TOKEN_SECRET, args.secret.as_bytes()) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let now = prefold_origin::Clock::system().unix_secs();
    let claims = Claims {
        sub: args.sub,
        exp: now.saturating_add(args.ttl),
        scope: args.scope,
    };
    println!("{}", mint(args.secret.as_bytes(), &claims));
    ExitCode::SUCCESS
}
