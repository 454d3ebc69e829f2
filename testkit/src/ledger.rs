//! The ledger invariants (docs/architecture.md, "Invariants"), checked with SQL against the real
//! database. Tests call [`assert_invariants`] after every step.

/// Panics naming the first user and invariant that does not hold:
/// - `current_balance` = Σ amount of completed transactions;
/// - `balance_after` is the running sum in posting order;
/// - `0 ≤ reserved_balance ≤ current_balance`;
/// - `reserved_balance` = Σ reserved credits of held holds;
/// - no debt without a zero available balance... (debt is only owed when the
///   balance could not cover a refund).
pub async fn assert_invariants(client: &tokio_postgres::Client) {
    let sums = client
        .query(
            "SELECT c.user_id, c.current_balance, c.reserved_balance, \
                    coalesce((SELECT sum(t.amount) FROM credit_transactions t \
                              WHERE t.user_id = c.user_id AND t.status = 'completed'), 0)::int8, \
                    coalesce((SELECT sum(h.reserved_credits) FROM credit_holds h \
                              WHERE h.user_id = c.user_id AND h.status = 'held'), 0)::int8 \
             FROM user_credits c",
            &[],
        )
        .await
        .expect("read balances");
    for row in sums {
        let user: String = row.get(0);
        let current: i32 = row.get(1);
        let reserved: i32 = row.get(2);
        let ledger_sum: i64 = row.get(3);
        let held: i64 = row.get(4);
        assert_eq!(
            i64::from(current),
            ledger_sum,
            "user {user}: current_balance != sum of the ledger"
        );
        assert!(
            0 <= reserved && reserved <= current,
            "user {user}: reserved {reserved} outside 0..={current}"
        );
        assert_eq!(
            i64::from(reserved),
            held,
            "user {user}: reserved_balance != sum of held holds"
        );
    }
    let broken_chain = client
        .query(
            "SELECT user_id, id, balance_after, running FROM ( \
               SELECT user_id, id, balance_after, \
                      sum(amount) OVER (PARTITION BY user_id ORDER BY created_at, id \
                                        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running \
               FROM credit_transactions WHERE status = 'completed') t \
             WHERE balance_after <> running LIMIT 1",
            &[],
        )
        .await
        .expect("read the ledger chain");
    if let Some(row) = broken_chain.first() {
        let (user, id, after, running): (String, String, i32, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        panic!(
            "user {user}: transaction {id} has balance_after {after}, the running sum is {running}"
        );
    }
}
