/* What the bindings see: DPDK's public headers, and the shim's exported versions of the
 * static-inline functions Rust cannot call directly. */
#include <rte_config.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ethdev.h>
#include <rte_ether.h>
#include <rte_ring.h>
#include <rte_bus_vdev.h>
#include <rte_cycles.h>

int omni_rte_errno(void);
unsigned omni_rte_lcore_id(void);
uint16_t omni_rte_eth_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t omni_rte_eth_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
struct rte_mbuf *omni_rte_pktmbuf_alloc(struct rte_mempool *mp);
int omni_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned count);
void omni_rte_pktmbuf_free(struct rte_mbuf *m);
void omni_rte_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned count);
char *omni_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
int omni_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
void omni_rte_pktmbuf_reset(struct rte_mbuf *m);
unsigned omni_rte_ring_enqueue_burst(struct rte_ring *r, void *const *objs, unsigned n);
unsigned omni_rte_ring_dequeue_burst(struct rte_ring *r, void **objs, unsigned n);
unsigned omni_rte_ring_count(const struct rte_ring *r);
uint64_t omni_rte_rdtsc(void);
uint64_t omni_rte_rss_ip_udp(void);
