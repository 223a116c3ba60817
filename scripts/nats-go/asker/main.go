// What the tutorial's frontend does for one id, as a command: asks UserNameById and
// TimeTeller (100 ms each) and prints the answers. Used to check shoal's providers from Go.
package main

import (
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	transport "shoalinterop/transport"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Println("usage: asker NATS_URL ID")
		os.Exit(2)
	}
	nc, err := nats.Connect(os.Args[1])
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	data, _ := proto.Marshal(&transport.User{Id: os.Args[2]})
	msg, err := nc.Request("UserNameById", data, time.Second)
	if err != nil {
		fmt.Println("user:", err)
		os.Exit(1)
	}
	user := transport.User{}
	if err := proto.Unmarshal(msg.Data, &user); err != nil {
		fmt.Println("user:", err)
		os.Exit(1)
	}
	msg, err = nc.Request("TimeTeller", nil, time.Second)
	if err != nil {
		fmt.Println("time:", err)
		os.Exit(1)
	}
	t := transport.Time{}
	if err := proto.Unmarshal(msg.Data, &t); err != nil {
		fmt.Println("time:", err)
		os.Exit(1)
	}
	fmt.Printf("id=%s name=%s time=%s\n", user.Id, user.Name, t.Time)
}
