// Package assumerole is the AWSAssumeRole controller: for each object it
// assumes the named role and keeps a Secret in the object's namespace with
// the credentials (or an ECR pull secret made with them) up to date, for
// workloads that cannot read credentials from the metadata address.
//
// It runs inside the server so that it shares what makes the pod path safe
// and cheap: the namespace policy decides whether the object's namespace may
// have the role (exactly as for a pod), and the credentials come from the
// server's credential cache, behind its STS rate limiter, so that many
// objects and pods naming one role cost one STS call per refresh period.
//
// It follows kubernetes/sample-controller: informer handlers only enqueue
// object keys, Run waits for the informers to sync, and workers reconcile
// one key at a time with rate-limited retries. Objects come from a dynamic
// informer and are converted to the typed API, which keeps the server free
// of generated clientsets and controller-runtime.
package assumerole

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	coreinformers "k8s.io/client-go/informers/core/v1"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"github.com/podiam/podiam/pkg/apis/iam/v1alpha1"
	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/podindex"
	"github.com/podiam/podiam/pkg/server/policy"
	"github.com/podiam/podiam/pkg/server/role"
)

// Labels and annotations on the Secrets the controller writes. The label
// is also the selector of the controller's Secret informer, so the server
// caches its own Secrets and no others.
const (
	LabelManagedBy       = "app.kubernetes.io/managed-by"
	ManagedBy            = "podiam"
	AnnotationExpiration = v1alpha1.Group + "/expiration"
)

// ManagedSelector selects the Secrets the controller writes; the command
// builds the Secret informer with it.
const ManagedSelector = LabelManagedBy + "=" + ManagedBy

// Errors that explain a Ready=False condition.
var (
	ErrInvalidSpec = errors.New("invalid AWSAssumeRole spec")
	errConflict    = errors.New("secret exists and is not owned by this AWSAssumeRole")
)

// Credentials is what the controller needs of the credential cache.
type Credentials interface {
	Get(ctx context.Context, key creds.Key) (creds.Credentials, error)
}

// RoleResolver turns roleName into a role ARN as the pod annotation is
// (*role.Resolver).
type RoleResolver interface {
	Resolve(annotation string) (string, error)
}

// PolicyChecker is the namespace policy's one decision (*policy.Checker):
// whether the namespace permits the role, and with which External ID the
// role is assumed, exactly as for the namespace's pods.
type PolicyChecker interface {
	Decide(ns policy.Namespace, key creds.Key) (policy.Decision, error)
}

// NamespaceGetter returns a namespace, or an error for which
// apierrors.IsNotFound holds when there is none, or one wrapping
// podindex.ErrNamespaceStale when its policy cannot be known now
// (podindex.Namespaces).
type NamespaceGetter interface {
	Get(name string) (*corev1.Namespace, error)
}

// ECRTokens gets ECR authorisation tokens as a role (*ECRClient).
type ECRTokens interface {
	Token(ctx context.Context, c creds.Credentials, reg Registry) (ECRToken, error)
}

// StatusWriter writes an object's status subresource (DynamicStatus).
type StatusWriter interface {
	UpdateStatus(ctx context.Context, obj *v1alpha1.AWSAssumeRole) error
}

// Config tunes the controller.
type Config struct {
	// DefaultSession is the server's --session: objects use the session
	// name a pod without a session-name annotation uses, so that they share
	// its cache entry.
	DefaultSession string
	// Refresh is the cache's refresh window (--session-refresh): the
	// Secret is rewritten once its credentials have this much left, by
	// which time the cache holds new ones. The overlap is thus Refresh.
	Refresh time.Duration
	// Workers is how many objects are reconciled at once; 0 means 2.
	Workers int
	// RetryBase and RetryMax bound the per-object retry backoff after a
	// failure; zero means 1s and 5m.
	RetryBase, RetryMax time.Duration
}

// Deps are the informers, clients and the server's parts the controller
// uses. The informers must not have been started yet.
type Deps struct {
	// Objects holds AWSAssumeRole objects as *unstructured.Unstructured
	// (a dynamic informer).
	Objects cache.SharedIndexInformer
	// Secrets holds the Secrets selected by ManagedSelector.
	Secrets    cache.SharedIndexInformer
	Namespaces coreinformers.NamespaceInformer
	// Current reads the namespaces decisions are taken on: the server's
	// podindex.Namespaces, which reads the API server while the namespace
	// watch is behind. nil means the informer's lister.
	Current   NamespaceGetter
	SecretAPI typedcorev1.SecretsGetter
	Status    StatusWriter
	Roles     RoleResolver
	Policy    PolicyChecker
	Cache     Credentials
	// ECR may be nil: EcrDockerConfigJson objects then fail with ECRFailed.
	ECR    ECRTokens
	InUse  *InUse
	Events record.EventRecorder
	// Registry may be nil (metrics not registered).
	Registry prometheus.Registerer
	Log      *slog.Logger
}

// Controller is the AWSAssumeRole controller.
type Controller struct {
	cfg        Config
	deps       Deps
	objects    cache.Indexer
	secrets    cache.Indexer
	namespaces NamespaceGetter
	synced     []cache.InformerSynced
	queue      workqueue.TypedRateLimitingInterface[string]
	log        *slog.Logger
	m          metrics
	now        func() time.Time

	ecrMu    sync.Mutex
	ecrCache map[ecrKey]ecrEntry
	ecrCalls singleflight.Group
}

// indexOwner indexes managed Secrets by the namespace/name of the
// AWSAssumeRole that controls them, so that a deleted or renamed object's
// Secret can be found without its spec.
const indexOwner = "podiam-assumerole-owner"

// New registers the controller's handlers on the informers.
func New(cfg Config, deps Deps) (*Controller, error) {
	if deps.Objects == nil || deps.Secrets == nil || deps.Namespaces == nil || deps.SecretAPI == nil ||
		deps.Status == nil || deps.Roles == nil || deps.Policy == nil || deps.Cache == nil ||
		deps.InUse == nil || deps.Events == nil || deps.Log == nil {
		return nil, errors.New("assumerole: every dependency but ECR and Registry is required")
	}
	if cfg.Refresh <= 0 || cfg.Workers < 0 || cfg.RetryBase < 0 || cfg.RetryMax < 0 {
		return nil, fmt.Errorf("assumerole: invalid config (refresh %s, workers %d)", cfg.Refresh, cfg.Workers)
	}
	if cfg.Workers == 0 {
		cfg.Workers = 2
	}
	if cfg.RetryBase == 0 {
		cfg.RetryBase = time.Second
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = 5 * time.Minute
	}
	m, err := newMetrics(deps.Registry)
	if err != nil {
		return nil, err
	}
	if err := deps.Secrets.AddIndexers(cache.Indexers{indexOwner: ownerIndex}); err != nil {
		return nil, fmt.Errorf("assumerole: secret indexer: %w", err)
	}
	var namespaces NamespaceGetter = deps.Namespaces.Lister()
	if deps.Current != nil {
		namespaces = deps.Current
	}
	c := &Controller{
		cfg:        cfg,
		deps:       deps,
		objects:    deps.Objects.GetIndexer(),
		secrets:    deps.Secrets.GetIndexer(),
		namespaces: namespaces,
		synced:     []cache.InformerSynced{deps.Objects.HasSynced, deps.Secrets.HasSynced, deps.Namespaces.Informer().HasSynced},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](cfg.RetryBase, cfg.RetryMax),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "podiam_assumerole"}),
		log:      deps.Log,
		m:        m,
		now:      time.Now,
		ecrCache: make(map[ecrKey]ecrEntry),
	}
	enqueueObj := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			c.queue.Add(key)
		}
	}
	if _, err := deps.Objects.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueueObj,
		UpdateFunc: func(_, obj any) { enqueueObj(obj) },
		DeleteFunc: enqueueObj,
	}); err != nil {
		return nil, fmt.Errorf("assumerole: object handler: %w", err)
	}
	// A managed Secret edited or deleted by hand sends its owner back
	// through reconcile, which writes it again.
	enqueueOwner := func(obj any) {
		if keys, _ := ownerIndex(obj); len(keys) > 0 {
			c.queue.Add(keys[0])
		}
	}
	if _, err := deps.Secrets.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueueOwner,
		UpdateFunc: func(_, obj any) { enqueueOwner(obj) },
		DeleteFunc: enqueueOwner,
	}); err != nil {
		return nil, fmt.Errorf("assumerole: secret handler: %w", err)
	}
	// A namespace whose policy changes sends its objects back through
	// reconcile, so a role it now denies loses its Secret at once.
	if _, err := deps.Namespaces.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { c.enqueueNamespace(obj) },
		UpdateFunc: func(old, obj any) {
			o, ok1 := old.(*corev1.Namespace)
			n, ok2 := obj.(*corev1.Namespace)
			// The permitted expression or the External ID: whatever
			// policy.Decide reads.
			if ok1 && ok2 && policy.NamespaceOf(o.Name, o.Annotations) == policy.NamespaceOf(n.Name, n.Annotations) {
				return
			}
			c.enqueueNamespace(obj)
		},
	}); err != nil {
		return nil, fmt.Errorf("assumerole: namespace handler: %w", err)
	}
	return c, nil
}

func (c *Controller) enqueueNamespace(obj any) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return
	}
	objs, err := c.objects.ByIndex(cache.NamespaceIndex, ns.Name)
	if err != nil {
		// The informer was built without a namespace index; scan instead.
		objs = nil
		for _, o := range c.objects.List() {
			if m, err := meta.Accessor(o); err == nil && m.GetNamespace() == ns.Name {
				objs = append(objs, o)
			}
		}
	}
	for _, o := range objs {
		if key, err := cache.MetaNamespaceKeyFunc(o); err == nil {
			c.queue.Add(key)
		}
	}
}

// ownerIndex returns namespace/name of the AWSAssumeRole controlling a
// Secret.
func ownerIndex(obj any) ([]string, error) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	s, ok := obj.(*corev1.Secret)
	if !ok {
		return nil, nil
	}
	ref := metav1.GetControllerOf(s)
	if ref == nil || ref.Kind != v1alpha1.Kind || ref.APIVersion != v1alpha1.GroupVersion.String() {
		return nil, nil
	}
	return []string{s.Namespace + "/" + ref.Name}, nil
}

// Run waits for the informers to sync, then reconciles queued objects
// until ctx is done, and returns nil once its workers have stopped.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return nil // ctx ended first
	}
	c.log.Info("awsassumerole controller started", "workers", c.cfg.Workers)
	var wg sync.WaitGroup
	for range c.cfg.Workers {
		wg.Go(func() {
			for c.processNext(ctx) {
			}
		})
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
	return nil
}

// HasSynced reports whether the controller's informers have synced.
func (c *Controller) HasSynced() bool {
	for _, s := range c.synced {
		if !s() {
			return false
		}
	}
	return true
}

func (c *Controller) processNext(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	after, err := c.reconcile(ctx, key)
	switch {
	case err != nil && ctx.Err() == nil:
		c.queue.AddRateLimited(key)
	case err != nil:
		// Shutting down: the error is the cancellation.
	default:
		c.queue.Forget(key)
		if after > 0 {
			c.queue.AddAfter(key, after)
		}
	}
	return true
}

// outcome is what one reconcile found: the Ready condition to set and what
// the status should say about the credentials.
type outcome struct {
	reason  string
	message string
	// event is the Warning Event's message; "" records none.
	event   string
	ready   bool
	roleARN string
	expires time.Time
	wrote   bool
}

// reconcile brings one object's Secret and status in line. It returns
// when to look again (the next refresh) or an error to retry with backoff.
func (c *Controller) reconcile(ctx context.Context, key string) (time.Duration, error) {
	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return 0, nil
	}
	raw, exists, err := c.objects.GetByKey(key)
	if err != nil {
		return 0, fmt.Errorf("get %s: %w", key, err)
	}
	if !exists {
		c.deps.InUse.Drop(key)
		// The garbage collector would delete the Secret too, through its
		// owner reference; doing it here takes effect at once.
		return 0, c.deleteOwned(ctx, namespace, name, "", "")
	}
	obj, err := fromUnstructured(raw)
	if err != nil {
		c.log.Error("awsassumerole object unreadable", "namespace", namespace, "name", name, "error", err)
		return 0, nil
	}
	if obj.DeletionTimestamp != nil {
		c.deps.InUse.Drop(key)
		return 0, nil
	}
	out, after, rerr := c.sync(ctx, key, obj)
	if errors.Is(rerr, podindex.ErrNamespaceStale) {
		// Nothing was decided: the status keeps what it said.
		return 0, rerr
	}
	c.m.reconciles.WithLabelValues(out.reason).Inc()
	if serr := c.writeStatus(ctx, obj, out); serr != nil {
		return 0, errors.Join(rerr, serr)
	}
	return after, rerr
}

// sync does the work of reconcile for an existing object; its outcome goes
// to the status whatever happened.
func (c *Controller) sync(ctx context.Context, key string, obj *v1alpha1.AWSAssumeRole) (outcome, time.Duration, error) {
	log := c.log.With("namespace", obj.Namespace, "name", obj.Name)
	fail := func(reason string, err error, event bool) outcome {
		o := outcome{reason: reason, message: err.Error()}
		if event {
			o.event = err.Error()
		}
		return o
	}

	roleARN, err := c.resolve(obj.Spec)
	if err != nil {
		c.deps.InUse.Drop(key)
		// An object whose spec no longer names a usable role must not keep
		// credentials for the role it named before.
		if derr := c.deleteOwned(ctx, obj.Namespace, obj.Name, "", ""); derr != nil {
			return fail(v1alpha1.ReasonInvalidSpec, err, true), 0, derr
		}
		return fail(v1alpha1.ReasonInvalidSpec, err, true), 0, nil
	}
	log = log.With("role_arn", roleARN)
	decision, err := c.decide(obj.Namespace, creds.Key{RoleARN: roleARN, SessionName: role.SessionName("", c.cfg.DefaultSession)})
	if errors.Is(err, podindex.ErrNamespaceStale) {
		// The policy cannot be known now: neither write credentials on a
		// namespace that may be old, nor delete those written, nor tell
		// the object it was denied. Retried with backoff; the relist
		// that brings the watch back queues the namespace's objects too
		// if its policy changed.
		return outcome{}, 0, err
	}
	if err != nil {
		c.deps.InUse.Drop(key)
		// Denied: nothing is written, and credentials written while the
		// namespace allowed the role go now rather than at expiry.
		derr := c.deleteOwned(ctx, obj.Namespace, obj.Name, "", "")
		log.Info("awsassumerole role denied by namespace policy", "reason", policy.Reason(err), "error", err)
		o := fail(v1alpha1.ReasonNotPermitted, err, true)
		o.roleARN = roleARN
		return o, 0, derr
	}
	// A renamed Secret leaves the old one behind otherwise.
	if err := c.deleteOwned(ctx, obj.Namespace, obj.Name, obj.Spec.SecretName, obj.UID); err != nil {
		return fail(v1alpha1.ReasonSecretError, err, false), 0, err
	}

	// The namespace's External ID, if it has one: an object cannot name
	// its own, as a pod cannot under --external-id-from=namespace.
	ckey := decision.Key
	// Marked in use before the fetch, so the cache refreshes the key ahead
	// of expiry and keeps it even when no pod uses the role.
	c.deps.InUse.Set(key, ckey)
	cr, err := c.deps.Cache.Get(ctx, ckey)
	if err != nil {
		reason := v1alpha1.ReasonSTSUnavailable
		if errors.Is(err, creds.ErrDenied) {
			reason = v1alpha1.ReasonSTSDenied
		}
		log.Warn("awsassumerole credentials unavailable", "reason", reason, "error", err)
		o := fail(reason, fmt.Errorf("assume role %s: %w", roleARN, err), reason == v1alpha1.ReasonSTSDenied)
		o.roleARN = roleARN
		return o, 0, err
	}

	expires := cr.Expiration
	var rendered Rendered
	if obj.Spec.SecretType == v1alpha1.SecretTypeEcrDockerConfigJson {
		tok, err := c.ecrToken(ctx, roleARN, obj.Spec.EcrRepositoryUrl, cr)
		if err != nil {
			log.Warn("awsassumerole ecr token failed", "error", err)
			o := fail(v1alpha1.ReasonECRFailed, err, true)
			o.roleARN = roleARN
			return o, 0, err
		}
		if !tok.ExpiresAt.IsZero() && tok.ExpiresAt.After(c.now()) && tok.ExpiresAt.Before(expires) {
			expires = tok.ExpiresAt
		}
		rendered, err = RenderDockerConfig(obj.Spec.EcrRepositoryUrl, tok.Password)
		if err != nil {
			o := fail(v1alpha1.ReasonECRFailed, err, false)
			o.roleARN = roleARN
			return o, 0, err
		}
	} else {
		rendered, err = Render(obj.Spec.SecretType, cr)
		if err != nil {
			o := fail(v1alpha1.ReasonInvalidSpec, err, true)
			o.roleARN = roleARN
			return o, 0, nil
		}
	}

	wrote, err := c.applySecret(ctx, obj, rendered, expires)
	if errors.Is(err, errConflict) {
		log.Warn("awsassumerole secret conflict", "secret", obj.Spec.SecretName)
		o := fail(v1alpha1.ReasonSecretConflict,
			fmt.Errorf("secret %s exists and is not owned by this AWSAssumeRole; it is left alone", obj.Spec.SecretName), true)
		o.roleARN = roleARN
		// Nothing to retry soon: the informer resync looks again, and
		// deleting the foreign Secret is a person's decision.
		return o, 0, nil
	}
	if err != nil {
		o := fail(v1alpha1.ReasonSecretError, err, false)
		o.roleARN = roleARN
		return o, 0, err
	}
	if wrote {
		c.m.writes.Inc()
		log.Info("awsassumerole secret written", "secret", obj.Spec.SecretName, "access_key_id", cr.AccessKeyID, "expiration", expires)
	}
	msg := fmt.Sprintf("credentials for %s in Secret %s", roleARN, obj.Spec.SecretName)
	if d := obj.Spec.DurationSeconds; d != nil && time.Duration(*d)*time.Second > time.Until(cr.Expiration)+c.cfg.Refresh {
		msg += fmt.Sprintf("; sessions last the server's --session-duration, not durationSeconds %d", *d)
	}
	return outcome{reason: v1alpha1.ReasonSecretWritten, message: msg, ready: true, roleARN: roleARN, expires: expires, wrote: wrote},
		c.nextRefresh(expires), nil
}

// nextRefresh is when to look again: once the credentials have Refresh
// left, when the cache (which refreshes keys in use on its own) holds new
// ones. A second's slack and a little jitter let its refresh land first and
// spread objects sharing a role.
func (c *Controller) nextRefresh(expires time.Time) time.Duration {
	d := expires.Sub(c.now()) - c.cfg.Refresh + time.Second + time.Duration(rand.Int64N(int64(time.Second)))
	return max(d, time.Second)
}

func (c *Controller) resolve(spec v1alpha1.AWSAssumeRoleSpec) (string, error) {
	name := spec.RoleArn
	if name == "" {
		name = spec.RoleName
	}
	if name == "" {
		return "", fmt.Errorf("%w: roleName or roleArn is required", ErrInvalidSpec)
	}
	arn, err := c.deps.Roles.Resolve(name)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidSpec, err)
	}
	switch spec.SecretType {
	case v1alpha1.SecretTypeMap, v1alpha1.SecretTypeFile:
	case v1alpha1.SecretTypeEcrDockerConfigJson:
		if _, err := ParseECRURL(spec.EcrRepositoryUrl); err != nil {
			return "", fmt.Errorf("%w: %w", ErrInvalidSpec, err)
		}
	default:
		return "", fmt.Errorf("%w: secretType %q", ErrInvalidSpec, spec.SecretType)
	}
	if spec.SecretName == "" {
		return "", fmt.Errorf("%w: secretName is required", ErrInvalidSpec)
	}
	return arn, nil
}

// decide applies the namespace's policy to key, as the pod path does:
// the permitted expression, and the namespace's External ID. A namespace
// the informer does not know denies.
func (c *Controller) decide(namespace string, key creds.Key) (policy.Decision, error) {
	ns, err := c.namespaces.Get(namespace)
	if err != nil && !apierrors.IsNotFound(err) {
		return policy.Decision{}, fmt.Errorf("namespace %s: %w", namespace, err)
	}
	var annotations map[string]string
	if ns != nil {
		annotations = ns.Annotations
	}
	return c.deps.Policy.Decide(policy.NamespaceOf(namespace, annotations), key)
}

// deleteOwned deletes the managed Secrets namespace/owner controls, except
// keepName when it is owned by keepUID (the object's current Secret).
func (c *Controller) deleteOwned(ctx context.Context, namespace, owner, keepName string, keepUID types.UID) error {
	objs, err := c.secrets.ByIndex(indexOwner, namespace+"/"+owner)
	if err != nil {
		return fmt.Errorf("owned secrets of %s/%s: %w", namespace, owner, err)
	}
	var errs []error
	for _, o := range objs {
		s, ok := o.(*corev1.Secret)
		if !ok {
			continue
		}
		if ref := metav1.GetControllerOf(s); s.Name == keepName && ref != nil && ref.UID == keepUID {
			continue
		}
		uid := s.UID
		err := c.deps.SecretAPI.Secrets(namespace).Delete(ctx, s.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			errs = append(errs, fmt.Errorf("delete secret %s/%s: %w", namespace, s.Name, err))
			continue
		}
		c.m.deletes.Inc()
		c.log.Info("awsassumerole secret deleted", "namespace", namespace, "secret", s.Name, "owner", owner)
	}
	return errors.Join(errs...)
}

// applySecret makes the object's Secret hold rendered. It returns whether
// it wrote, and errConflict for a Secret of that name the object does not
// control, which is never touched.
func (c *Controller) applySecret(ctx context.Context, obj *v1alpha1.AWSAssumeRole, r Rendered, expires time.Time) (bool, error) {
	api := c.deps.SecretAPI.Secrets(obj.Namespace)
	want := desiredSecret(obj, r, expires)
	var cur *corev1.Secret
	if o, ok, _ := c.secrets.GetByKey(obj.Namespace + "/" + obj.Spec.SecretName); ok {
		cur, _ = o.(*corev1.Secret)
	}
	if cur == nil {
		created, err := api.Create(ctx, want, metav1.CreateOptions{})
		if err == nil {
			_ = created
			return true, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return false, fmt.Errorf("create secret %s: %w", want.Name, err)
		}
		// Not in the informer but there: someone else's Secret, or ours
		// with its label removed by hand. Only the API can tell.
		if cur, err = api.Get(ctx, want.Name, metav1.GetOptions{}); err != nil {
			return false, fmt.Errorf("get secret %s: %w", want.Name, err)
		}
	}
	if ref := metav1.GetControllerOf(cur); ref == nil || ref.UID != obj.UID {
		return false, errConflict
	}
	if cur.Type != want.Type {
		// A Secret's type cannot change: replace it.
		uid := cur.UID
		if err := api.Delete(ctx, cur.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
			return false, fmt.Errorf("replace secret %s: %w", cur.Name, err)
		}
		if _, err := api.Create(ctx, want, metav1.CreateOptions{}); err != nil {
			return false, fmt.Errorf("create secret %s: %w", want.Name, err)
		}
		return true, nil
	}
	if secretMatches(cur, want) {
		return false, nil
	}
	upd := cur.DeepCopy()
	upd.Data = want.Data
	upd.StringData = nil
	if upd.Labels == nil {
		upd.Labels = map[string]string{}
	}
	maps.Copy(upd.Labels, want.Labels)
	if upd.Annotations == nil {
		upd.Annotations = map[string]string{}
	}
	maps.Copy(upd.Annotations, want.Annotations)
	if _, err := api.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("update secret %s: %w", cur.Name, err)
	}
	return true, nil
}

// desiredSecret is the Secret the object should have.
func desiredSecret(obj *v1alpha1.AWSAssumeRole, r Rendered, expires time.Time) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:        obj.Spec.SecretName,
			Namespace:   obj.Namespace,
			Labels:      map[string]string{LabelManagedBy: ManagedBy},
			Annotations: map[string]string{AnnotationExpiration: expires.UTC().Format(time.RFC3339)},
			// Not blockOwnerDeletion: that would need update on the
			// objects' finalizers, a permission the controller has no other
			// use for.
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: v1alpha1.GroupVersion.String(),
				Kind:       v1alpha1.Kind,
				Name:       obj.Name,
				UID:        obj.UID,
				Controller: new(true),
			}},
		},
		Type: r.Type,
		Data: r.Data,
	}
}

// secretMatches reports whether cur already holds want's data, label and
// expiration annotation; other labels and annotations are the user's.
func secretMatches(cur, want *corev1.Secret) bool {
	if len(cur.Data) != len(want.Data) {
		return false
	}
	for k, v := range want.Data {
		if string(cur.Data[k]) != string(v) {
			return false
		}
	}
	for k, v := range want.Labels {
		if cur.Labels[k] != v {
			return false
		}
	}
	for k, v := range want.Annotations {
		if cur.Annotations[k] != v {
			return false
		}
	}
	return true
}

// writeStatus sets the status from out and writes it when it changed. An
// Event goes with a failure only when the reason changes, so a retry loop
// does not flood the namespace.
func (c *Controller) writeStatus(ctx context.Context, obj *v1alpha1.AWSAssumeRole, out outcome) error {
	upd := obj.DeepCopy()
	st := &upd.Status
	prev := meta.FindStatusCondition(obj.Status.Conditions, v1alpha1.ConditionReady)
	cond := metav1.Condition{
		Type:               v1alpha1.ConditionReady,
		Status:             metav1.ConditionFalse,
		Reason:             out.reason,
		Message:            out.message,
		ObservedGeneration: obj.Generation,
	}
	if out.ready {
		cond.Status = metav1.ConditionTrue
	}
	meta.SetStatusCondition(&st.Conditions, cond)
	st.ObservedGeneration = obj.Generation
	st.RoleArn = out.roleARN
	if out.ready {
		st.Expiration = seconds(out.expires)
		if out.wrote || st.LastRefreshTime == nil {
			st.LastRefreshTime = seconds(c.now())
		}
	} else if out.reason != v1alpha1.ReasonSTSUnavailable && out.reason != v1alpha1.ReasonSTSDenied && out.reason != v1alpha1.ReasonECRFailed {
		// The Secret is gone or was never written: no expiration to show.
		// On STS and ECR failures the Secret still holds the last ones.
		st.Expiration = nil
	}
	if out.event != "" && (prev == nil || prev.Reason != out.reason) {
		ref := obj.DeepCopy()
		ref.APIVersion, ref.Kind = v1alpha1.GroupVersion.String(), v1alpha1.Kind
		c.deps.Events.Event(ref, corev1.EventTypeWarning, out.reason, out.event)
	}
	if equality.Semantic.DeepEqual(obj.Status, upd.Status) {
		return nil
	}
	if err := c.deps.Status.UpdateStatus(ctx, upd); err != nil {
		return fmt.Errorf("update status of %s/%s: %w", obj.Namespace, obj.Name, err)
	}
	return nil
}

// seconds is t as the API stores it, so that a status read back compares
// equal and an unchanged status is not written again.
func seconds(t time.Time) *metav1.Time {
	mt := metav1.NewTime(t.UTC().Truncate(time.Second))
	return &mt
}

func fromUnstructured(obj any) (*v1alpha1.AWSAssumeRole, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil, fmt.Errorf("unexpected object %T", obj)
	}
	var out v1alpha1.AWSAssumeRole
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &out); err != nil {
		return nil, fmt.Errorf("convert %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	return &out, nil
}
