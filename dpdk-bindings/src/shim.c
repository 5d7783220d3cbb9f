/* Exported wrappers for DPDK's static-inline functions (burst I/O, mbuf handling, rings,
 * rte_errno, lcore id): compiled with the same flags as DPDK itself (pkg-config cflags),
 * one call each, nothing else. */
#include "shim.h"

int omni_rte_errno(void) { return rte_errno; }
unsigned omni_rte_lcore_id(void) { return rte_lcore_id(); }

uint16_t omni_rte_eth_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_rx_burst(port, queue, pkts, n);
}
uint16_t omni_rte_eth_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_tx_burst(port, queue, pkts, n);
}

struct rte_mbuf *omni_rte_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }
int omni_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned count) {
    return rte_pktmbuf_alloc_bulk(mp, mbufs, count);
}
void omni_rte_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }
void omni_rte_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned count) {
    rte_pktmbuf_free_bulk(mbufs, count);
}
char *omni_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_append(m, len); }
int omni_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_trim(m, len); }
void omni_rte_pktmbuf_reset(struct rte_mbuf *m) { rte_pktmbuf_reset(m); }

unsigned omni_rte_ring_enqueue_burst(struct rte_ring *r, void *const *objs, unsigned n) {
    return rte_ring_enqueue_burst(r, objs, n, NULL);
}
unsigned omni_rte_ring_dequeue_burst(struct rte_ring *r, void **objs, unsigned n) {
    return rte_ring_dequeue_burst(r, objs, n, NULL);
}
unsigned omni_rte_ring_count(const struct rte_ring *r) { return rte_ring_count(r); }
uint64_t omni_rte_rdtsc(void) { return rte_rdtsc(); }
uint64_t omni_rte_rss_ip_udp(void) { return RTE_ETH_RSS_IP | RTE_ETH_RSS_UDP; }
