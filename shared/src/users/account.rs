//! [`Account`]: the extractor for "the signed-in, active account, with a
//! database connection to work in" — the prelude most authenticated routes
//! share (verify the token, take a pooled connection, load the caller's user
//! row and refuse a locked-out or erased account, open a transaction under
//! row-level security as that user), written once. [`AdminAccount`] is the
//! same for the admin routes: the token's `admin` permission first.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use tokio_postgres::Transaction;

use super::User;
use super::repo::current_user;
use crate::kernel::error::ApiError;
use crate::ports::db;
use crate::web::auth::{Admin, Caller, Identity};
use crate::web::state::AppState;

/// The caller's account, active, with the pooled connection it was read
/// through. A handler taking it answers 401 without a valid token, 404 when
/// the identity has not signed in yet, 403 for a suspended, banned or erased
/// account — before it reads its body.
pub struct Account {
    pub user: User,
    pub identity: Identity,
    conn: deadpool_postgres::Object,
}

impl FromRequestParts<AppState> for Account {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Caller(identity) = Caller::from_request_parts(parts, state).await?;
        let conn = state.db.get().await?;
        let user = current_user(&**conn, &identity).await?;
        Ok(Self {
            user,
            identity,
            conn,
        })
    }
}

impl Account {
    /// A transaction under row-level security as this user (the `app_api`
    /// role, see [`db::begin_as`]), with the user it acts for.
    pub async fn begin_as_user(&mut self) -> Result<(Transaction<'_>, &User), ApiError> {
        let tx = db::begin_as(&mut self.conn, Some(&self.user.id)).await?;
        Ok((tx, &self.user))
    }

    /// A transaction as the service's own role, for system-side work that
    /// must commit with the user's (switch with [`db::act_as`]).
    pub async fn begin_system(&mut self) -> Result<(Transaction<'_>, &User), ApiError> {
        let client: &mut tokio_postgres::Client = &mut self.conn;
        let tx = client.transaction().await?;
        Ok((tx, &self.user))
    }

    /// The connection, outside any transaction.
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.conn
    }

    /// The connection, for work that opens its own transactions, and the user.
    pub fn parts(&mut self) -> (&mut tokio_postgres::Client, &User) {
        (&mut self.conn, &self.user)
    }
}

/// The signed-in admin: a token with the `admin` permission ([`Admin`]: 401
/// without a token, 403 without the permission), then the admin's own active
/// account as [`Account`] loads it (404 before the first sign-in, 403 when
/// banned or erased), with the connection it was read through. Admin work runs
/// as the service's own role, with the admin named in the audit rows.
pub struct AdminAccount {
    pub admin: User,
    conn: deadpool_postgres::Object,
}

impl FromRequestParts<AppState> for AdminAccount {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Admin(identity) = Admin::from_request_parts(parts, state).await?;
        let conn = state.db.get().await?;
        let admin = current_user(&**conn, &identity).await?;
        Ok(Self { admin, conn })
    }
}

impl AdminAccount {
    /// A transaction as the service's own role, with the admin it acts for.
    pub async fn begin(&mut self) -> Result<(Transaction<'_>, &User), ApiError> {
        let client: &mut tokio_postgres::Client = &mut self.conn;
        let tx = client.transaction().await?;
        Ok((tx, &self.admin))
    }

    /// The connection, outside any transaction.
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.conn
    }
}
