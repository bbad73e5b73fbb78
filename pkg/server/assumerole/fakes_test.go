package assumerole

import (
	"context"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/record"

	"github.com/podiam/podiam/pkg/apis/iam/v1alpha1"
)

type statusFunc func(*v1alpha1.AWSAssumeRole)

func (f statusFunc) UpdateStatus(_ context.Context, o *v1alpha1.AWSAssumeRole) error {
	f(o)
	return nil
}

// recorderFunc records Event reasons.
type recorderFunc func(reason string)

var _ record.EventRecorder = recorderFunc(nil)

func (f recorderFunc) Event(_ runtime.Object, _, reason, _ string) { f(reason) }
func (f recorderFunc) Eventf(_ runtime.Object, _, reason, _ string, _ ...any) {
	f(reason)
}
func (f recorderFunc) AnnotatedEventf(_ runtime.Object, _ map[string]string, _, reason, _ string, _ ...any) {
	f(reason)
}
