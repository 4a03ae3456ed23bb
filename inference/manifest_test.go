package inference

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func FuzzManifest(f *testing.F) {
	m := testManifest()
	m.Files = map[string]string{BackboneFile: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", HeadFile: "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210", "baseline.json": "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}
	unsigned, err := MarshalManifest(m)
	if err != nil {
		f.Fatal(err)
	}
	_, priv := testKey(1)
	if err := Sign(m, priv); err != nil {
		f.Fatal(err)
	}
	signed, err := MarshalManifest(m)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(unsigned)
	f.Add(signed)
	f.Add(bytes.Replace(signed, []byte(`"head": "head.safetensors"`), []byte(`"head": null`), 1))
	f.Add(bytes.Replace(unsigned, []byte(`"threshold": 0.5`), []byte(`"threshold": 0.5, "threshold": 0.5`), 1))
	f.Add([]byte(`{"name":"x","input":{"mean":[1,2,3,4]}}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest(data)
		if err != nil {
			if !errors.Is(err, ErrManifest) {
				t.Fatalf("error does not wrap ErrManifest: %v", err)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("accepted manifest fails Validate: %v", err)
		}
		if m.ClassIndex(PositiveClass) < 0 {
			t.Fatal("accepted manifest without the positive class")
		}
		// The canonical form exists and is a fixed point.
		c, err := CanonicalManifest(data)
		if err != nil {
			t.Fatalf("canonical form of an accepted manifest: %v", err)
		}
		c2, err := CanonicalManifest(c)
		if err != nil || !bytes.Equal(c, c2) {
			t.Fatalf("canonical form is not a fixed point:\n%s\n%s (%v)", c, c2, err)
		}
		// What is accepted survives MarshalManifest unchanged.
		out, err := MarshalManifest(m)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		m2, err := ParseManifest(out)
		if err != nil {
			t.Fatalf("re-parse of marshalled manifest: %v\n%s", err, out)
		}
		if !m2.Created.Equal(m.Created) {
			t.Fatalf("created changed: %v -> %v", m.Created, m2.Created)
		}
		m2.Created = m.Created
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("manifest changed through marshal:\n%+v\n%+v", m, m2)
		}
	})
}
