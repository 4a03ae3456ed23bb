package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
	"github.com/scopewatch/scopewatch/internal/testutil"
)

// `feedback label` reaches a broker that requires a client certificate
// (the shipped systemd/mosquitto set-up) with --cert and --key, and the
// device's label topic gets the label; without them the broker refuses it.
func TestFeedbackLabelWithClientCertificate(t *testing.T) {
	b, files := testutil.StartMosquittoTLS(t)
	o, err := mqttconn.Options(mqttconn.Config{Broker: b.TLSURL(), ClientID: "device", CAFile: files.CA,
		CertFile: files.ClientCert, KeyFile: files.ClientKey, CleanSession: true}, nil, mqttconn.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	dev := mqtt.NewClient(o.SetConnectRetry(false).SetAutoReconnect(false))
	if err := mqttconn.Wait(dev.Connect(), 10*time.Second); err != nil {
		t.Fatalf("device connects: %v\n%s", err, b.Log())
	}
	defer dev.Disconnect(50)
	got := make(chan []byte, 1)
	if err := mqttconn.Wait(dev.Subscribe("scopewatch/v1/lab-a/dev-1/label", 1, func(_ mqtt.Client, m mqtt.Message) { got <- m.Payload() }), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := files.IssueClient(t, "scopewatch-labeller")
	args := []string{"--broker", b.TLSURL(), "--ca", files.CA, "--site", "lab-a", "--device", "dev-1", "--id", "fb-1",
		"--label", "parasitized", "--who", "tester", "--timeout", "5s"}

	var stdout, stderr bytes.Buffer
	if err := runFeedback(context.Background(), append([]string{"label"}, args...), &stdout, &stderr); err == nil {
		t.Fatalf("without a client certificate the broker took the label: %s", stdout.String())
	}
	stdout.Reset()
	if err := runFeedback(context.Background(), append([]string{"label", "--cert", certFile, "--key", keyFile}, args...), &stdout, &stderr); err != nil {
		t.Fatalf("feedback label --cert --key: %v\n%s\n%s", err, stderr.String(), b.Log())
	}
	select {
	case p := <-got:
		l, err := wire.DecodeLabel(p)
		if err != nil || l.FeedbackID != "fb-1" || l.Label != "parasitized" || l.Who != "tester" {
			t.Fatalf("label %+v, %v", l, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the device did not receive the label within 5 s")
	}
}
