package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/refusal"
	"github.com/podiam/podiam/pkg/server/podindex"
	pb "github.com/podiam/podiam/proto/podiam/v1"
)

// lookupErr is a PodLookup that always fails with err.
type lookupErr struct{ err error }

func (l lookupErr) Lookup(context.Context, string) (*podindex.Pod, error) { return nil, l.err }

// unused fails the test if the request path goes past identity.
type unused struct{ t *testing.T }

func (u unused) Get(string) (*corev1.Namespace, error) {
	u.t.Error("namespace read after a failed lookup")
	return nil, errors.New("unused")
}
func (u unused) Key(map[string]string, string) (creds.Key, error) {
	u.t.Error("key resolved after a failed lookup")
	return creds.Key{}, errors.New("unused")
}
func (u unused) Check(string, bool, string) error {
	u.t.Error("policy checked after a failed lookup")
	return errors.New("unused")
}
func (u unused) CredentialsGet(context.Context, creds.Key) (creds.Credentials, error) {
	u.t.Error("credentials fetched after a failed lookup")
	return creds.Credentials{}, errors.New("unused")
}

type credentialsFunc func(context.Context, creds.Key) (creds.Credentials, error)

func (f credentialsFunc) Get(ctx context.Context, k creds.Key) (creds.Credentials, error) {
	return f(ctx, k)
}

// TestLookupFailuresMapToCodes pins what an agent hears when identity
// fails. "Pod unknown" makes an agent drop the credentials it holds for the
// address, so a stale index must answer Unavailable, never that.
func TestLookupFailuresMapToCodes(t *testing.T) {
	tests := []struct {
		err    error
		code   codes.Code
		reason pb.Reason
		result string
	}{
		{fmt.Errorf("%w: dial tcp: connection refused", podindex.ErrStale), codes.Unavailable, pb.Reason_REASON_UNSPECIFIED, resultPodIndexStale},
		{podindex.ErrNotFound, codes.NotFound, pb.Reason_REASON_POD_UNKNOWN, resultPodUnknown},
		{fmt.Errorf("%w (checked with the api server)", podindex.ErrNotFound), codes.NotFound, pb.Reason_REASON_POD_UNKNOWN, resultPodUnknown},
		{podindex.ErrConflict, codes.FailedPrecondition, pb.Reason_REASON_IP_CONFLICT, resultIPConflict},
	}
	for _, tc := range tests {
		t.Run(tc.result+": "+tc.err.Error(), func(t *testing.T) {
			w, _ := newTestWatcher(t)
			u := unused{t}
			svc, err := New(Config{DefaultSession: "kiam", PodWait: 100 * time.Millisecond}, Deps{
				Pods:        lookupErr{tc.err},
				Namespaces:  u,
				Keys:        u,
				Policy:      u,
				Credentials: credentialsFunc(u.CredentialsGet),
				Events:      record.NewFakeRecorder(10),
				Watcher:     w,
				Synced:      func() bool { return true },
			}, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			_, err = svc.GetPodCredentials(context.Background(), &pb.GetPodCredentialsRequest{Ip: "10.0.0.1"})
			if status.Code(err) != tc.code || refusal.Reason(err) != tc.reason {
				t.Fatalf("got %v (reason %v), want %v %v", err, refusal.Reason(err), tc.code, tc.reason)
			}
			if got := testutil.ToFloat64(svc.requests.WithLabelValues(tc.result)); got != 1 {
				t.Fatalf("requests{result=%q} = %v, want 1", tc.result, got)
			}
		})
	}
}

// Every result a denial can carry has a code; a missing one would be OK.
func TestEveryResultHasACode(t *testing.T) {
	for _, r := range []string{resultBadRequest, resultNotSynced, resultPodIndexStale, resultPodUnknown, resultIPConflict,
		resultWrongNode, resultNoRole, resultInvalidAnnotation, resultPolicyDenied, resultSTSDenied, resultSTSUnavailable} {
		if c, ok := resultCodes[r]; !ok || c == codes.OK {
			t.Errorf("result %q has no code", r)
		}
	}
}
