// The tutorial's event subscriber (import paths updated; a failed connect exits).
package main

import (
	"fmt"
	"os"

	"github.com/nats-io/nats.go"
	natsp "github.com/nats-io/nats.go/encoders/protobuf"

	transport "shoalinterop/transport"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Println("Wrong number of arguments. Need NATS server address.")
		return
	}
	nc, err := nats.Connect(os.Args[1])
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	ec, err := nats.NewEncodedConn(nc, natsp.PROTOBUF_ENCODER)
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	defer ec.Close()

	ec.Subscribe("Messaging.Text.Standard", func(m *transport.TextMessage) {
		fmt.Println("Got standard message: \"", m.Body, "\" with the Id ", m.Id, ".")
	})
	ec.Subscribe("Messaging.Text.Respond", func(subject, reply string, m *transport.TextMessage) {
		fmt.Println("Got ask for response message: \"", m.Body, "\" with the Id ", m.Id, ".")
		newMessage := transport.TextMessage{Id: m.Id, Body: "Responding!"}
		ec.Publish(reply, &newMessage)
	})
	receiveChannel := make(chan *transport.TextMessage)
	ec.BindRecvChan("Messaging.Text.Channel", receiveChannel)
	ec.Flush()
	fmt.Println("ready")
	for m := range receiveChannel {
		fmt.Println("Got channel'ed message: \"", m.Body, "\" with the Id ", m.Id, ".")
	}
}
