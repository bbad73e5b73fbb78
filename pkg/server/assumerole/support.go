package assumerole

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"

	"github.com/podiam/podiam/pkg/apis/iam/v1alpha1"
	"github.com/podiam/podiam/pkg/creds"
)

// InUse is the set of session keys permitted AWSAssumeRole objects use.
// The credential cache refreshes only keys in use, and asks this set as
// well as the pod index, so it is built before both and shared.
type InUse struct {
	mu    sync.RWMutex
	byObj map[string]creds.Key
	count map[creds.Key]int
}

// NewInUse returns an empty set.
func NewInUse() *InUse {
	return &InUse{byObj: make(map[string]creds.Key), count: make(map[creds.Key]int)}
}

// Set records that object obj (namespace/name) uses key.
func (u *InUse) Set(obj string, key creds.Key) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if old, ok := u.byObj[obj]; ok {
		if old == key {
			return
		}
		u.decLocked(old)
	}
	u.byObj[obj] = key
	u.count[key]++
}

// Drop forgets obj's key.
func (u *InUse) Drop(obj string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if old, ok := u.byObj[obj]; ok {
		delete(u.byObj, obj)
		u.decLocked(old)
	}
}

func (u *InUse) decLocked(k creds.Key) {
	if u.count[k]--; u.count[k] <= 0 {
		delete(u.count, k)
	}
}

// Has reports whether any object uses key. It takes only a read lock and
// never calls out, as the cache requires of its InUse function.
func (u *InUse) Has(key creds.Key) bool {
	u.mu.RLock()
	defer u.mu.RUnlock()
	return u.count[key] > 0
}

// DynamicStatus writes status through the dynamic client.
type DynamicStatus struct {
	Client dynamic.Interface
}

// UpdateStatus implements StatusWriter.
func (d DynamicStatus) UpdateStatus(ctx context.Context, obj *v1alpha1.AWSAssumeRole) error {
	obj = obj.DeepCopy()
	obj.APIVersion, obj.Kind = v1alpha1.GroupVersion.String(), v1alpha1.Kind
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return fmt.Errorf("convert status: %w", err)
	}
	_, err = d.Client.Resource(v1alpha1.GroupVersionResource).Namespace(obj.Namespace).
		UpdateStatus(ctx, &unstructured.Unstructured{Object: m}, metav1.UpdateOptions{})
	return err
}

// ecrKey names an ECR token: one per role and registry.
type ecrKey struct {
	roleARN string
	reg     Registry
}

// ecrEntry is a token and the credentials it was made with: a token lives
// no longer than the session that asked for it, so new credentials mean a
// new token.
type ecrEntry struct {
	accessKeyID string
	tok         ECRToken
	fetched     time.Time
}

// ecrToken returns the token for the role and registry, from the
// controller's cache while it was made with the current credentials and
// has more than Refresh left, so objects sharing a role and registry cost
// one ECR call per refresh.
func (c *Controller) ecrToken(ctx context.Context, roleARN, url string, cr creds.Credentials) (ECRToken, error) {
	if c.deps.ECR == nil {
		return ECRToken{}, fmt.Errorf("ecr client not configured")
	}
	reg, err := ParseECRURL(url)
	if err != nil {
		return ECRToken{}, err
	}
	k := ecrKey{roleARN: roleARN, reg: reg}
	c.ecrMu.Lock()
	e, ok := c.ecrCache[k]
	c.ecrMu.Unlock()
	if ok && e.accessKeyID == cr.AccessKeyID && tokenFresh(e, c.now(), c.cfg.Refresh) {
		return e.tok, nil
	}
	v, err, _ := c.ecrCalls.Do(fmt.Sprintf("%s|%s|%s|%s", roleARN, reg.ID, reg.Region, cr.AccessKeyID), func() (any, error) {
		tok, err := c.deps.ECR.Token(ctx, cr, reg)
		c.m.ecrCalls.WithLabelValues(resultLabel(err)).Inc()
		if err != nil {
			return ECRToken{}, err
		}
		c.ecrMu.Lock()
		c.ecrCache[k] = ecrEntry{accessKeyID: cr.AccessKeyID, tok: tok, fetched: c.now()}
		c.ecrMu.Unlock()
		return tok, nil
	})
	if err != nil {
		return ECRToken{}, err
	}
	return v.(ECRToken), nil
}

// tokenFresh: a token whose expiry is unknown, or earlier than when it was
// fetched (a stand-in ECR's fixed date), lives as long as its credentials.
func tokenFresh(e ecrEntry, now time.Time, refresh time.Duration) bool {
	exp := e.tok.ExpiresAt
	if exp.IsZero() || !exp.After(e.fetched) {
		return true
	}
	return exp.Sub(now) > refresh
}

func resultLabel(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

type metrics struct {
	reconciles *prometheus.CounterVec
	ecrCalls   *prometheus.CounterVec
	writes     prometheus.Counter
	deletes    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (metrics, error) {
	m := metrics{
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podiam_assumerole_reconciles_total",
			Help: "AWSAssumeRole reconciles by outcome (the Ready condition's reason).",
		}, []string{"reason"}),
		ecrCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podiam_assumerole_ecr_requests_total",
			Help: "ECR GetAuthorizationToken calls by result.",
		}, []string{"result"}),
		writes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podiam_assumerole_secret_writes_total",
			Help: "Secrets created or updated with new credentials.",
		}),
		deletes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podiam_assumerole_secret_deletes_total",
			Help: "Secrets deleted because their object was deleted, renamed its Secret, or lost its role.",
		}),
	}
	for _, r := range []string{v1alpha1.ReasonSecretWritten, v1alpha1.ReasonNotPermitted, v1alpha1.ReasonInvalidSpec,
		v1alpha1.ReasonSTSDenied, v1alpha1.ReasonSTSUnavailable, v1alpha1.ReasonECRFailed,
		v1alpha1.ReasonSecretConflict, v1alpha1.ReasonSecretError} {
		m.reconciles.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	for _, col := range []prometheus.Collector{m.reconciles, m.ecrCalls, m.writes, m.deletes} {
		if err := reg.Register(col); err != nil {
			return m, fmt.Errorf("assumerole: register metrics: %w", err)
		}
	}
	return m, nil
}
