from elevenlabs_agent.cli import main

main()
