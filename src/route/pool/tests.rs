use std::net::Ipv4Addr;

use super::*;

fn address(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

fn spec(balance: Balance, members: &[(Backend, u32)]) -> config::Pool {
    config::Pool {
        members: members
            .iter()
            .map(|(backend, weight)| config::Member {
                backend: backend.clone(),
                weight: *weight,
                position: (1, 1),
            })
            .collect(),
        balance,
        health: None,
    }
}

fn pool(balance: Balance, weights: &[u32]) -> Pool {
    let members: Vec<(Backend, u32)> = weights
        .iter()
        .enumerate()
        .map(|(index, &weight)| (Backend::Addr(address(9000 + index as u16)), weight))
        .collect();
    Pool::new("r", &spec(balance, &members), None)
}

fn ports(plan: &Plan) -> Vec<u16> {
    plan.iter()
        .map(|member| member.address.port() - 9000)
        .collect()
}

fn client(index: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + index))
}

/// nginx's sequence for weights 5, 1, 1: the heavy member is spread out, not bunched.
#[test]
fn the_round_robin_order_is_smooth_and_weighted() {
    assert_eq!(smooth_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
    // Common divisors are taken out: one cycle is as short as it can be.
    assert_eq!(smooth_schedule(&[2, 4]), [1, 0, 1]);
    assert_eq!(smooth_schedule(&[1]), [0]);
}

#[test]
fn round_robin_serves_each_member_by_its_weight_and_plans_distinct_fallbacks() {
    let pool = pool(Balance::RoundRobin, &[1, 1, 2]);
    let mut first = [0; 3];
    for _ in 0..400 {
        let plan = pool.plan(client(1), 1);
        let order = ports(&plan);
        assert_eq!(order.len(), MAX_ATTEMPTS);
        let mut distinct = order.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), order.len(), "{order:?}");
        first[order[0] as usize] += 1;
    }
    assert_eq!(first, [100, 100, 200]);
}

#[test]
fn least_connections_picks_the_fewest_per_unit_of_weight() {
    let pool = pool(Balance::LeastConnections, &[1, 1, 2]);
    let members = pool.members();
    let list: Vec<&Arc<Member>> = members.iter().collect();
    let _held = [
        list[0].open(),
        list[0].open(),
        list[1].open(),
        list[2].open(),
    ];
    // Open per unit of weight: 2, 1, 0.5.
    assert_eq!(ports(&pool.plan(client(1), 1)), [2, 1, 0]);
    let _more = [list[2].open(), list[2].open()];
    // Now 2, 1, 1.5.
    assert_eq!(ports(&pool.plan(client(1), 1))[0], 1);
    drop(_held);
    assert_eq!(list[0].active(), 0);
}

#[test]
fn least_connections_spreads_ties() {
    let pool = pool(Balance::LeastConnections, &[1, 1, 1]);
    let mut first = [0; 3];
    for _ in 0..30 {
        first[ports(&pool.plan(client(1), 1))[0] as usize] += 1;
    }
    assert_eq!(first, [10, 10, 10]);
}

/// Rendezvous hashing: a client keeps its member; when one of N leaves only its clients move
/// (about 1/N), and when one joins only about 1/(N+1) move, all of them to it.
#[test]
fn client_hash_is_sticky_and_moves_only_about_one_in_n() {
    let members: Vec<(Backend, u32)> = (0..10)
        .map(|port| (Backend::Addr(address(9000 + port)), 1))
        .collect();
    let all = Pool::new("r", &spec(Balance::ClientHash, &members), None);
    let fewer = Pool::new("r", &spec(Balance::ClientHash, &members[..9]), None);
    let clients = 20_000;
    let pick = |pool: &Pool, index| ports(&pool.plan(client(index), 1))[0];
    let mut moved = 0;
    let mut served = [0u32; 10];
    for index in 0..clients {
        let before = pick(&all, index);
        assert_eq!(
            pick(&all, index),
            before,
            "the same client, the same member"
        );
        served[before as usize] += 1;
        let after = pick(&fewer, index);
        if before == 9 {
            moved += 1;
        } else {
            assert_eq!(after, before, "a client of a member that stayed moved");
        }
    }
    let share = f64::from(moved) / f64::from(clients);
    assert!((0.08..0.12).contains(&share), "{share}");
    // And the load is even: each member within a fifth of its tenth.
    for count in served {
        assert!((1_600..2_400).contains(&count), "{served:?}");
    }
}

#[test]
fn client_hash_weights_shares() {
    let pool = pool(Balance::ClientHash, &[1, 3]);
    let heavy = (0..10_000)
        .filter(|&index| ports(&pool.plan(client(index), 1))[0] == 1)
        .count();
    assert!((7_200..7_800).contains(&heavy), "{heavy}");
}

#[test]
fn failed_connects_eject_a_member_for_a_growing_time() {
    let pool = pool(Balance::RoundRobin, &[1, 1]);
    let members = pool.members();
    let member = members.iter().next().unwrap();
    assert_eq!(member.failed(1_000), None);
    assert_eq!(member.failed(1_000), None);
    assert_eq!(
        member.failed(1_000),
        Some(Change::Down(Some(EJECTION_BASE_MS)))
    );
    assert!(!member.is_available(1_000 + EJECTION_BASE_MS - 1));
    for _ in 0..10 {
        assert_eq!(ports(&pool.plan(client(1), 1_500)), [1]);
    }
    // Back on probation: one more failure ejects it again, for twice as long.
    assert!(member.is_available(1_000 + EJECTION_BASE_MS));
    let later = 1_000 + EJECTION_BASE_MS;
    assert_eq!(
        member.failed(later),
        Some(Change::Down(Some(2 * EJECTION_BASE_MS)))
    );
    // A success ends the probation.
    assert_eq!(member.succeeded(), Some(Change::Up));
    assert!(member.is_available(later));
    assert_eq!(member.failed(later), None);
    // The longest ejection is bounded.
    for _ in 0..40 {
        let _ = member.failed(u64::MAX / 2);
    }
    assert!(member.is_available(u64::MAX / 2 + EJECTION_MAX_MS + 1));
}

#[test]
fn checks_take_a_member_down_after_fall_and_up_after_rise() {
    let pool = pool(Balance::RoundRobin, &[1, 1]);
    let members = pool.members();
    let member = members.iter().next().unwrap();
    assert_eq!(member.checked(false, 2, 3), None);
    assert_eq!(member.checked(true, 2, 3), None, "a pass resets the streak");
    assert_eq!(member.checked(false, 2, 3), None);
    assert_eq!(member.checked(false, 2, 3), None);
    assert_eq!(member.checked(false, 2, 3), Some(Change::Down(None)));
    assert!(!member.is_available(1));
    assert_eq!(ports(&pool.plan(client(1), 1)), [1]);
    assert_eq!(member.checked(true, 2, 3), None);
    assert_eq!(member.checked(true, 2, 3), Some(Change::Up));
    assert!(member.is_available(1));
}

/// Every member down: all are tried rather than none, and the change is reported once each way.
#[test]
fn with_every_member_down_all_are_tried() {
    let pool = pool(Balance::RoundRobin, &[1, 1]);
    let members = pool.members();
    for member in members.iter() {
        for _ in 0..3 {
            member.checked(false, 1, 1);
        }
    }
    let plan = pool.plan(client(1), 1);
    assert_eq!(plan.panic_changed, Some(true));
    assert_eq!(plan.len(), 2);
    assert_eq!(pool.plan(client(1), 1).panic_changed, None);
    members.iter().next().unwrap().checked(true, 1, 1);
    let plan = pool.plan(client(1), 1);
    assert_eq!(plan.panic_changed, Some(false));
    assert_eq!(ports(&plan), [0]);
}

/// A host name is a member once resolved, as every address it resolves to; an unchanged answer
/// changes nothing; a reload keeps both the addresses and the members' state.
#[test]
fn resolved_addresses_are_members_and_survive_a_reload() {
    let host = Backend::Host(ServerName::parse(b"app.internal").unwrap(), 443);
    let mut config = spec(
        Balance::RoundRobin,
        &[(Backend::Addr(address(9000)), 1), (host, 2)],
    );
    config.health = Some(config::Health {
        check: config::Check::Tcp,
        interval: std::time::Duration::from_secs(5),
        timeout: std::time::Duration::from_secs(2),
        rise: 2,
        fall: 3,
    });
    let pool = Pool::new("r", &config, None);
    assert_eq!(pool.members().len(), 1);
    assert!(!pool.is_resolved(1));
    let answer = vec![
        SocketAddr::from(([10, 0, 0, 2], 443)),
        SocketAddr::from(([10, 0, 0, 1], 443)),
    ];
    assert!(pool.set_resolved(1, answer.clone()));
    assert!(!pool.set_resolved(1, answer.into_iter().rev().collect()));
    let members = pool.members();
    let addresses: Vec<String> = members.iter().map(|m| m.address.to_string()).collect();
    assert_eq!(
        addresses,
        ["127.0.0.1:9000", "10.0.0.1:443", "10.0.0.2:443"]
    );
    let first = members.iter().next().unwrap();
    for _ in 0..3 {
        first.checked(false, 1, 3);
    }
    assert!(!first.is_available(1));

    let reloaded = Pool::new("r", &config, Some(&pool));
    assert!(reloaded.is_resolved(1));
    let kept = reloaded.members();
    assert_eq!(kept.len(), 3);
    assert!(
        Arc::ptr_eq(kept.iter().next().unwrap(), first),
        "health kept"
    );
    assert!(!kept.iter().next().unwrap().is_available(1));

    // A host answer that drops an address drops that member only.
    assert!(reloaded.set_resolved(1, vec![SocketAddr::from(([10, 0, 0, 2], 443))]));
    assert_eq!(reloaded.members().len(), 2);

    // Checks removed by a reload: nothing would bring the member back, so it is back now.
    config.health = None;
    let unchecked = Pool::new("r", &config, Some(&reloaded));
    assert!(unchecked.members().iter().next().unwrap().is_available(1));
}

#[test]
fn a_pool_with_nothing_resolved_plans_nothing() {
    let host = Backend::Host(ServerName::parse(b"app.internal").unwrap(), 443);
    let pool = Pool::new("r", &spec(Balance::ClientHash, &[(host, 1)]), None);
    assert!(pool.plan(client(1), 1).is_empty());
}
