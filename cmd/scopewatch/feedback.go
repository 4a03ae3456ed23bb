package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
)

const feedbackUsage = "usage: scopewatch feedback label --broker URL [--ca CA --cert CERT --key KEY] --site S --device D --id FEEDBACK_ID --label parasitized|uninfected --who NAME"

func runFeedback(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "label" {
		fmt.Fprintln(stderr, feedbackUsage)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			return flag.ErrHelp
		}
		return fmt.Errorf("%w: missing subcommand (label)", errUsage)
	}
	fs := newFlagSet("feedback label", stderr)
	broker := fs.String("broker", "tcp://127.0.0.1:1883", "MQTT broker URL")
	clientID := fs.String("client-id", "", "MQTT client id (default: labeller-PID)")
	site := fs.String("site", "", "site of the device that sent the sample")
	device := fs.String("device", "", "device that sent the sample")
	id := fs.String("id", "", "feedback sample id")
	label := fs.String("label", "", "parasitized or uninfected")
	who := fs.String("who", os.Getenv("USER"), "who labels (name or e-mail)")
	ca := fs.String("ca", "", "PEM CA bundle for the broker certificate")
	cert := fs.String("cert", "", "client certificate (PEM), for a broker that requires one (systemd/mosquitto: the labeller's)")
	key := fs.String("key", "", "client key (PEM)")
	root := fs.String("topic-root", mqttconn.Root, "topic root of the fleet (the devices' mqtt.topic_root)")
	timeout := fs.Duration("timeout", 30*time.Second, "give up when the broker has not acknowledged by then")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	payload, err := wire.Label{FeedbackID: *id, Label: *label, Who: *who, Time: time.Now().UTC()}.Encode()
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	topics, err := mqttconn.NewTopics(*root)
	if err != nil {
		return fmt.Errorf("%w: --topic-root: %v", errUsage, err)
	}
	topic, err := topics.Device(*site, *device, mqttconn.KindLabel)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if *clientID == "" {
		*clientID = fmt.Sprintf("labeller-%d", os.Getpid())
	}
	cfg := mqttconn.Config{Broker: *broker, ClientID: *clientID, CAFile: *ca, CertFile: *cert, KeyFile: *key, CleanSession: true}
	cfg.ApplyEnv(os.LookupEnv)
	opts, err := mqttconn.Options(cfg, nil, mqttconn.Hooks{})
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	opts.SetConnectRetry(false).SetAutoReconnect(false)
	client := mqtt.NewClient(opts)
	if tok := client.Connect(); !tok.WaitTimeout(*timeout) || tok.Error() != nil {
		return fmt.Errorf("connect to %s: %v", *broker, tokenErr(tok))
	}
	defer client.Disconnect(250)
	tok := client.Publish(topic, 1, false, payload)
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(*timeout):
		return fmt.Errorf("publish label: no PUBACK from %s within %v", *broker, *timeout)
	}
	if tok.Error() != nil {
		return fmt.Errorf("publish label: %w", tok.Error())
	}
	fmt.Fprintf(stdout, "label %s for %s published to %s\n", *label, *id, topic)
	return nil
}

func tokenErr(t mqtt.Token) error {
	if t.Error() != nil {
		return t.Error()
	}
	return fmt.Errorf("timed out")
}
