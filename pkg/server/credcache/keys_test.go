package credcache

import (
	"context"
	"sync"
	"testing"

	"github.com/podiam/podiam/pkg/creds"
)

// Everything a key sends to STS separates sessions, and nothing else does:
// pods asking with equal keys (tags built in any order) share one call,
// and the number of STS calls is the number of distinct keys.
func TestOneCallPerDistinctKey(t *testing.T) {
	h := newHarness(t, nil)
	base := creds.Key{RoleARN: "arn:aws:iam::123456789012:role/app", SessionName: "payments.ledger"}
	ns := creds.Tag{Key: "kubernetes-namespace", Value: "payments"}
	sa := creds.Tag{Key: "kubernetes-service-account", Value: "ledger"}
	with := func(mod func(*creds.Key)) creds.Key { k := base; mod(&k); return k }
	distinct := []creds.Key{
		base,
		with(func(k *creds.Key) { k.SessionName = "payments.report" }),
		with(func(k *creds.Key) { k.ExternalID = "ext-1" }),
		with(func(k *creds.Key) { k.SourceIdentity = "ledger@payments" }),
		with(func(k *creds.Key) { k.Tags = creds.NewTags(ns) }),
		with(func(k *creds.Key) { k.Tags = creds.NewTags(ns, sa) }),
		with(func(k *creds.Key) { k.Tags = creds.NewTags(creds.Tag{Key: "kubernetes-namespace", Value: "billing"}) }),
		with(func(k *creds.Key) { k.SourceIdentity = "ledger@payments"; k.Tags = creds.NewTags(ns) }),
	}
	// Ten pods for each key; the tagged ones build their tags in the other
	// order, which must not matter.
	var asks []creds.Key
	for range 10 {
		asks = append(asks, distinct...)
		asks = append(asks, with(func(k *creds.Key) { k.Tags = creds.NewTags(sa, ns) }))
	}
	h.sts.setBlock(make(chan struct{})) // hold every call until all pods wait
	block := h.sts.block
	var wg sync.WaitGroup
	got := make([]creds.Credentials, len(asks))
	for i, k := range asks {
		wg.Go(func() {
			c, err := h.c.Get(context.Background(), k)
			if err != nil {
				t.Error(err)
			}
			got[i] = c
		})
	}
	eventually(t, "every pod waiting", func() bool {
		n := 0
		for _, k := range distinct {
			n += max(h.waiters(k), 0)
		}
		return n == len(asks)
	})
	close(block)
	wg.Wait()
	if n := h.sts.count(); n != len(distinct) {
		t.Fatalf("%d STS calls for %d distinct keys", n, len(distinct))
	}
	byKey := map[string]string{}
	for i, k := range asks {
		if prev, ok := byKey[k.String()]; ok && prev != got[i].AccessKeyID {
			t.Fatalf("key %v: pods got %s and %s", k, prev, got[i].AccessKeyID)
		}
		byKey[k.String()] = got[i].AccessKeyID
	}
	keyIDs := map[string]bool{}
	for _, id := range byKey {
		keyIDs[id] = true
	}
	if len(keyIDs) != len(distinct) {
		t.Fatalf("%d distinct credentials for %d keys", len(keyIDs), len(distinct))
	}
}
