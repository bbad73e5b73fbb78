package node

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

// apply creates every object of the YAML files as `kubectl apply -f` would
// on an empty cluster (there is no kubectl here), after edit has changed
// what the test must (the image, the STS endpoint). It returns a function
// that deletes them again, as `kubectl delete -f` would.
func (n *node) apply(t *testing.T, files []string, edit func(runtime.Object)) func() {
	t.Helper()
	var objs []runtime.Object
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
		for {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(bytes.TrimSpace(stripComments(doc))) == 0 {
				continue
			}
			obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			edit(obj)
			objs = append(objs, obj)
		}
	}
	ctx := context.Background()
	for _, o := range objs {
		if err := n.createOrDelete(ctx, o, false); err != nil {
			t.Fatalf("create %T: %v", o, err)
		}
	}
	return func() {
		for i := len(objs) - 1; i >= 0; i-- {
			if err := n.createOrDelete(ctx, objs[i], true); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("delete %T: %v", objs[i], err)
			}
		}
	}
}

func stripComments(doc []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func (n *node) createOrDelete(ctx context.Context, o runtime.Object, del bool) error {
	c := n.client
	cr, dl := metav1.CreateOptions{}, metav1.DeleteOptions{}
	var err error
	switch o := o.(type) {
	case *corev1.ServiceAccount:
		if del {
			return c.CoreV1().ServiceAccounts(o.Namespace).Delete(ctx, o.Name, dl)
		}
		_, err = c.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, cr)
	case *corev1.Service:
		if del {
			return c.CoreV1().Services(o.Namespace).Delete(ctx, o.Name, dl)
		}
		_, err = c.CoreV1().Services(o.Namespace).Create(ctx, o, cr)
	case *rbacv1.ClusterRole:
		if del {
			return c.RbacV1().ClusterRoles().Delete(ctx, o.Name, dl)
		}
		_, err = c.RbacV1().ClusterRoles().Create(ctx, o, cr)
	case *rbacv1.ClusterRoleBinding:
		if del {
			return c.RbacV1().ClusterRoleBindings().Delete(ctx, o.Name, dl)
		}
		_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, o, cr)
	case *rbacv1.Role:
		if del {
			return c.RbacV1().Roles(o.Namespace).Delete(ctx, o.Name, dl)
		}
		_, err = c.RbacV1().Roles(o.Namespace).Create(ctx, o, cr)
	case *rbacv1.RoleBinding:
		if del {
			return c.RbacV1().RoleBindings(o.Namespace).Delete(ctx, o.Name, dl)
		}
		_, err = c.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, cr)
	case *appsv1.DaemonSet:
		if del {
			return c.AppsV1().DaemonSets(o.Namespace).Delete(ctx, o.Name, dl)
		}
		_, err = c.AppsV1().DaemonSets(o.Namespace).Create(ctx, o, cr)
	case *appsv1.Deployment:
		if del {
			return c.AppsV1().Deployments(o.Namespace).Delete(ctx, o.Name, dl)
		}
		_, err = c.AppsV1().Deployments(o.Namespace).Create(ctx, o, cr)
	case *corev1.Secret:
		if del {
			return c.CoreV1().Secrets(o.Namespace).Delete(ctx, o.Name, dl)
		}
		_, err = c.CoreV1().Secrets(o.Namespace).Create(ctx, o, cr)
	default:
		return fmt.Errorf("apply: unsupported kind %T", o)
	}
	return err
}

// podSpecOf returns the pod template of a workload, or nil.
func podSpecOf(o runtime.Object) *corev1.PodSpec {
	switch o := o.(type) {
	case *appsv1.DaemonSet:
		return &o.Spec.Template.Spec
	case *appsv1.Deployment:
		return &o.Spec.Template.Spec
	}
	return nil
}
