//! The NCCL communicator layout of `hybrid` on the device path, checked on the CPU: which
//! ranks form a rank's shard and replica groups ([`group_places`]) must be exactly the host
//! path's ([`FsdpRank`]'s `SubGroup`s), so sharding, checkpoints and data sampling agree; and
//! the NCCL unique ids travel over the host group in one exchange ([`exchange_group_ids`]):
//! each group's first member creates its id, every member gets it, a leader that cannot create
//! one fails every rank with its name. Only `ncclCommInitRank` itself needs a GPU.

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use kormo_dist::comm::SubGroup;
use kormo_dist::nccl::{
    exchange_group_ids, group_places, hybrid_replica_color, hybrid_shard_color, GroupPlace,
};
use kormo_dist::tcp::{rendezvous, RendezvousConfig};
use kormo_dist::{CommError, HostTransport, LocalComm, Strategy};

#[test]
fn hybrid_places_are_the_host_path_groups() {
    for (world, group) in [(1, 1), (2, 1), (2, 2), (4, 2), (6, 3), (6, 2), (8, 4)] {
        let config = fsdp_config(Strategy::Hybrid, Some(group));
        let ranks: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = LocalComm::group(world, TIMEOUT)
                .into_iter()
                .map(|comm| {
                    let config = config.clone();
                    scope.spawn(move || {
                        let rank = fsdp_rank(comm, &config);
                        (
                            rank.shard_group().rank(),
                            rank.shard_group().world_size(),
                            rank.replica_rank(),
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let parents: Vec<Arc<dyn HostTransport>> = LocalComm::group(world, TIMEOUT)
            .into_iter()
            .map(|c| Arc::new(c) as Arc<dyn HostTransport>)
            .collect();
        for (rank, &(shard_rank, shard_size, replica_rank)) in ranks.iter().enumerate() {
            let places = group_places(rank, world, Some(group)).unwrap();
            let [shard, replica] = &places[..] else {
                panic!("hybrid has two groups: {places:?}")
            };
            assert_eq!((shard.name, replica.name), ("shard-group", "replica-group"));
            // The host engine's view of the same rank.
            assert_eq!(
                (shard.rank, shard.size(), replica.rank),
                (shard_rank, shard_size, replica_rank),
                "world {world}, group {group}, rank {rank}"
            );
            // Members as SubGroup::split makes them with the same colours.
            let parent = &parents[rank];
            let nodes = SubGroup::split(parent.clone(), hybrid_shard_color(group));
            let replicas = SubGroup::split(parent.clone(), hybrid_replica_color(group));
            assert_eq!(shard.members, nodes.members());
            assert_eq!(replica.members, replicas.members());
            // Consecutive ranks per node; world rank = replica rank x group size + shard rank.
            assert_eq!(shard.leader(), rank - rank % group);
            assert_eq!(replica.leader(), rank % group);
            assert_eq!(replica.rank * group + shard.rank, rank);
            assert_eq!(replica.size(), world / group);
        }
    }
}

#[test]
fn other_strategies_use_one_world_communicator() {
    let places = group_places(2, 4, None).unwrap();
    assert_eq!(
        places,
        vec![GroupPlace {
            name: "world",
            members: vec![0, 1, 2, 3],
            rank: 2
        }]
    );
}

#[test]
fn bad_group_sizes_are_refused_by_name() {
    for (world, group) in [(6, 4), (4, 0), (2, 3)] {
        let e = group_places(0, world, Some(group)).unwrap_err().to_string();
        assert!(
            e.contains(&format!("hybrid_group_size = {group}"))
                && e.contains(&format!("world size {world}")),
            "{e}"
        );
    }
    assert!(group_places(4, 4, None).is_err());
}

/// A fake NCCL id: who made it, for which group kind, and how many ids that rank made before.
fn fake_id(rank: usize, count: usize) -> Vec<u8> {
    let mut id = vec![0u8; 128];
    id[0] = rank as u8;
    id[1] = count as u8;
    id[2] = 0xAB;
    id
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every rank of a TCP group of `world` in threads: `body(rank, comm)`.
fn over_tcp<T: Send>(world: usize, body: impl Fn(usize, &dyn HostTransport) -> T + Sync) -> Vec<T> {
    let port = free_port();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let body = &body;
                scope.spawn(move || {
                    let config = RendezvousConfig {
                        rank,
                        world_size: world,
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                        timeout: Duration::from_secs(20),
                    };
                    let comm = rendezvous(&config, || Ok(Vec::new())).unwrap();
                    body(rank, &comm)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn group_ids_come_from_each_groups_first_member_over_tcp() {
    let (world, group) = (6, 3);
    let results = over_tcp(world, |rank, comm| {
        let places = group_places(rank, world, Some(group)).unwrap();
        let mut made = 0;
        let ids = exchange_group_ids(comm, &places, || {
            made += 1;
            Ok(fake_id(rank, made - 1))
        })
        .unwrap();
        (places, ids, made)
    });
    for (rank, (places, ids, made)) in results.into_iter().enumerate() {
        let (shard, replica) = (&places[0], &places[1]);
        // Rank 0 leads both of its groups (shard id first), ranks 1, 2 lead a replica group
        // each, 3 leads a shard group, 4 and 5 lead nothing.
        let leads = [2, 1, 1, 1, 0, 0][rank];
        assert_eq!(made, leads, "rank {rank}");
        let shard_leader = shard.leader();
        assert_eq!(ids[0], fake_id(shard_leader, 0), "rank {rank} shard id");
        // A replica leader's id is its second when it leads its shard group too (rank 0).
        let replica_count = usize::from(replica.leader() % group == 0);
        assert_eq!(
            ids[1],
            fake_id(replica.leader(), replica_count),
            "rank {rank} replica id"
        );
    }
    // The world layout (full_shard): rank 0's id everywhere, as the rendezvous hands it out.
    let results = over_tcp(3, |rank, comm| {
        let places = group_places(rank, 3, None).unwrap();
        exchange_group_ids(comm, &places, || Ok(fake_id(rank, 7))).unwrap()
    });
    assert!(results.iter().all(|ids| ids == &vec![fake_id(0, 7)]));
}

#[test]
fn a_leader_that_cannot_create_an_id_fails_every_rank_by_name() {
    let results = over_tcp(4, |rank, comm| {
        let places = group_places(rank, 4, Some(2)).unwrap();
        exchange_group_ids(comm, &places, || {
            if rank == 2 {
                Err(CommError::Setup("no NCCL here".into()))
            } else {
                Ok(fake_id(rank, 0))
            }
        })
        .unwrap_err()
        .to_string()
    });
    for e in results {
        assert!(
            e.contains("rank 2 could not create the NCCL unique id of its shard-group")
                && e.contains("no NCCL here"),
            "{e}"
        );
    }
}

#[test]
fn ranks_that_disagree_on_the_layout_are_told() {
    // Rank 0 runs with group size 2, rank 1 with 1 (a recipe edited between launches): each
    // would get an id, but not of the same communicators; every rank errors instead.
    let results = over_tcp(2, |rank, comm| {
        let group = if rank == 0 { 2 } else { 1 };
        let places = group_places(rank, 2, Some(group)).unwrap();
        exchange_group_ids(comm, &places, || Ok(fake_id(rank, 0))).map(|_| ())
    });
    for e in &results {
        let e = e.as_ref().unwrap_err().to_string();
        assert!(e.contains("disagree on dist.hybrid_group_size"), "{e}");
    }
}
